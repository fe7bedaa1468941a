//! `gradguard sweep`: a grid of runs in parallel, resumable, ranked by measured effect.

use anyhow::Result;
use gradguard_lab::RunConfig;
use gradguard_lab::sweep::{Grid, GuardVerdict, TWIN_TOLERANCE};
use gradguard_report::html::{Report, render};

use crate::exit::BadInput;
use crate::files::write_atomically;
use crate::lab::{ensure_dir, lab_error, sweep_with_progress};
use crate::lab_args::SweepArgs;
use crate::report_cmd::{ranking_table, rate_chart, rate_table, read_runs};

fn grid_of(args: &SweepArgs) -> Result<Grid> {
    if let Some(path) = &args.grid {
        let text = std::fs::read_to_string(path)
            .map_err(|e| BadInput(format!("cannot read '{}': {e}", path.display())))?;
        let mut grid = Grid::from_toml(&text, path).map_err(lab_error)?;
        if let Some(v) = args.steps {
            grid.base.steps = v;
        }
        if let Some(v) = args.precision {
            grid.base.precision = v;
        }
        return Ok(grid);
    }
    let mut base = RunConfig::for_task(args.task);
    if let Some(v) = args.steps {
        base.steps = v;
    }
    if let Some(v) = args.seq_len {
        base.seq_len = usize::try_from(v).unwrap_or(usize::MAX);
    }
    if let Some(v) = args.precision {
        base.precision = v;
    }
    if let Some(kind) = args.optimizer {
        base.set_optimizer(kind);
    }
    if let Some(v) = args.schedule {
        base.schedule = v;
    }
    base.set_warmup(args.warmup);
    let mut grid = Grid::single(base);
    fn set<T>(dst: &mut Vec<T>, src: Vec<T>) {
        if !src.is_empty() {
            *dst = src;
        }
    }
    set(
        &mut grid.depths,
        args.depth
            .iter()
            .map(|&d| usize::try_from(d).unwrap_or(usize::MAX))
            .collect(),
    );
    set(&mut grid.activations, args.activation.clone());
    set(&mut grid.lrs, args.lr.clone());
    set(&mut grid.inits, args.init.clone());
    set(&mut grid.init_gains, args.init_gain.clone());
    set(
        &mut grid.remedies,
        args.remedy.iter().map(|r| r.0.clone()).collect(),
    );
    set(&mut grid.seeds, args.seed.clone());
    Ok(grid)
}

/// Runs `gradguard sweep`.
pub fn run(args: &SweepArgs) -> Result<()> {
    let grid = grid_of(args)?;
    let runs = grid.runs().map_err(lab_error)?;
    let out = ensure_dir(&args.out)?;
    let result = sweep_with_progress(&runs, &out, args.jobs, "sweep")?;
    let data = read_runs(std::slice::from_ref(&out))?;
    let table = ranking_table(&result);
    let rates = rate_table(&result);
    let mut tables = vec![table.clone()];
    tables.extend(rates.clone());
    let html = render(&Report {
        title: "gradguard sweep",
        intro: &[format!("{} runs in {}.", result.runs.len(), out.display())],
        tables: &tables,
        figures: &rate_chart(&result).into_iter().collect::<Vec<_>>(),
        runs: &data,
        headline: false,
    });
    write_atomically(&out.join("report.html"), html.as_bytes())?;
    if args.json {
        return crate::files::print_json(&result);
    }
    let rows: Vec<Vec<String>> = table.rows.clone();
    let headers: Vec<&str> = table.headers.iter().map(String::as_str).collect();
    print!("{}", gradguard_report::table::render(&headers, &rows));
    if let Some(v) = &result.guard {
        println!("{}", guard_line(v));
    }
    if let Some(t) = &rates {
        let headers: Vec<&str> = t.headers.iter().map(String::as_str).collect();
        println!("{}", t.caption);
        print!("{}", gradguard_report::table::render(&headers, &t.rows));
    }
    println!(
        "{} runs; results in {} (sweep.json, report.html)",
        result.runs.len(),
        out.display()
    );
    Ok(())
}

/// The default guard against the best clipping rule, in one paragraph.
pub fn guard_line(v: &GuardVerdict) -> String {
    let loss = |l: Option<f64>| l.map_or("non-finite".to_string(), |l| format!("{l:.4}"));
    let worst = v.worst.as_ref().map_or(String::new(), |w| {
        format!(
            "; worst cell {}: guard {} vs best clip {}",
            w.dir,
            loss(w.guard_loss),
            loss(w.best_clip_loss)
        )
    });
    let twin = v.twin.as_ref().map_or(String::new(), |t| {
        format!(
            "; the grid's own noise: the better clip's twin (its threshold within {}%) is within \
             10% (+0.02) of it in {} of {} cells",
            TWIN_TOLERANCE * 100.0,
            t.within_target,
            t.cells
        )
    });
    format!(
        "default guard vs the better of clip-global and agc, {} cells: rescued {} of {} \
         unprotected failures; failed where a clip finished: {}; final loss within 10% (+0.02): \
         {} of {}{worst}{twin}",
        v.cells,
        v.rescued,
        v.unprotected_failed,
        v.failed_where_clip_finished,
        v.within_target,
        v.cells
    )
}
