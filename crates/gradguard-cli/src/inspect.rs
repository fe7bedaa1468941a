//! `gradguard inspect FILE [--json]`: per-tensor and global statistics of a gradient file.

use anyhow::Result;
use gradguard::detect::{DepthProfile, depth_profile};
use gradguard::{NonFiniteAt, combined, first_non_finite};
use serde::Serialize;

use crate::args::InspectArgs;
use crate::files::{print_json, read_gradient_file};
use gradguard_report::table::{num, render};

/// Tolerance on per-layer growth when locating where growth starts.
const GROWTH_TOLERANCE: f64 = 0.1;

#[derive(Serialize)]
struct TensorRow {
    name: String,
    shape: Vec<usize>,
    numel: usize,
    l2: f64,
    l1: f64,
    linf: f64,
    non_finite: u64,
    first_non_finite: Option<NonFiniteAt>,
}

#[derive(Serialize)]
struct GlobalRow {
    tensors: usize,
    numel: usize,
    l2: f64,
    l1: f64,
    linf: f64,
    non_finite: u64,
    first_non_finite_tensor: Option<String>,
}

#[derive(Serialize)]
struct Inspection {
    file: String,
    tensors: Vec<TensorRow>,
    global: GlobalRow,
    depth: DepthProfile,
}

/// Runs the command.
pub fn run(args: &InspectArgs) -> Result<()> {
    let file = read_gradient_file(&args.file, None)?;
    let grads = file.grads();
    let stats = grads.stats();
    let all = combined(&stats);
    let names: Vec<&str> = (0..grads.tensor_count()).map(|i| grads.name(i)).collect();
    let inspection = Inspection {
        file: args.file.display().to_string(),
        tensors: stats
            .iter()
            .enumerate()
            .map(|(t, s)| TensorRow {
                name: grads.name(t).to_string(),
                shape: grads.shape(t).to_vec(),
                numel: s.len,
                l2: s.l2(),
                l1: s.l1(),
                linf: s.linf(),
                non_finite: s.non_finite(),
                first_non_finite: s.first_non_finite,
            })
            .collect(),
        global: GlobalRow {
            tensors: stats.len(),
            numel: all.len,
            l2: all.l2(),
            l1: all.l1(),
            linf: all.linf(),
            non_finite: all.non_finite(),
            first_non_finite_tensor: first_non_finite(&stats).map(|(t, _)| names[t].to_string()),
        },
        depth: depth_profile(&names, &stats, GROWTH_TOLERANCE),
    };
    if args.json {
        return print_json(&inspection);
    }
    print_text(&inspection);
    Ok(())
}

fn print_text(x: &Inspection) {
    let rows: Vec<Vec<String>> = x
        .tensors
        .iter()
        .map(|t| {
            vec![
                t.name.clone(),
                format!("{:?}", t.shape),
                t.numel.to_string(),
                num(t.l2),
                num(t.l1),
                num(t.linf),
                t.non_finite.to_string(),
            ]
        })
        .collect();
    print!(
        "{}",
        render(
            &[
                "tensor",
                "shape",
                "numel",
                "L2",
                "L1",
                "max|g|",
                "non-finite"
            ],
            &rows
        )
    );
    let g = &x.global;
    println!(
        "global: {} tensors, {} values, L2 {}, L1 {}, max|g| {}, non-finite {}",
        g.tensors,
        g.numel,
        num(g.l2),
        num(g.l1),
        num(g.linf),
        g.non_finite
    );
    if let Some(t) = &g.first_non_finite_tensor {
        println!("first non-finite value in '{t}'");
    }
    if let Some(f) = x.depth.growth_factor {
        print!(
            "depth: {} layers, mean growth x{:.3} per layer towards the input",
            x.depth.layers.len(),
            f
        );
        match x.depth.growth_onset {
            Some(i) => println!(", growing from '{}' back", x.depth.layers[i].layer),
            None => println!(),
        }
    }
}
