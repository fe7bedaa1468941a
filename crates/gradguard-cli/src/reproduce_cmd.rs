//! `gradguard reproduce`: classic results re-measured, each with a verdict and its figure.

use anyhow::Result;
use gradguard_lab::reproduce::{Budget, Finding, Paper, page, reproduce};

use crate::files::write_atomically;
use crate::lab::{ensure_dir, lab_error};
use crate::lab_args::ReproduceArgs;

/// The terminal form of one finding.
fn text(f: &Finding) -> String {
    let yes_no = |holds: bool| if holds { "yes" } else { "no" };
    let parts: String = f
        .parts
        .iter()
        .map(|p| format!("\n    {}: {}", p.name, yes_no(p.holds)))
        .collect();
    format!(
        "{} — {}\n  paper claims: {}\n  we measured:  {}\n  holds: {}  ({}; {} runs, {:.1} s, {} budget){parts}\n",
        f.name,
        f.paper,
        f.claim,
        f.measured,
        yes_no(f.holds),
        f.rule,
        f.runs,
        f.wall_time_s,
        f.budget.name()
    )
}

/// Runs `gradguard reproduce`.
pub fn run(args: &ReproduceArgs) -> Result<()> {
    let papers: Vec<Paper> = match args.name.0 {
        Some(p) => vec![p],
        None => Paper::ALL.to_vec(),
    };
    let budget = if args.quick {
        Budget::Quick
    } else {
        Budget::Full
    };
    let out = ensure_dir(&args.out)?;
    let mut findings = Vec::new();
    for paper in papers {
        let finding = reproduce(paper, budget, args.jobs).map_err(lab_error)?;
        if !args.json {
            println!("{}", text(&finding));
        }
        findings.push(finding);
    }
    let json = serde_json::to_vec_pretty(&findings).expect("findings serialize");
    write_atomically(&out.join("findings.json"), &json)?;
    write_atomically(&out.join("report.html"), page::html(&findings).as_bytes())?;
    if args.json {
        return match (args.name.0, findings.as_slice()) {
            (Some(_), [one]) => crate::files::print_json(one),
            _ => crate::files::print_json(&findings),
        };
    }
    println!(
        "{} of {} claims hold; report in {}",
        findings.iter().filter(|f| f.holds).count(),
        findings.len(),
        out.join("report.html").display()
    );
    Ok(())
}
