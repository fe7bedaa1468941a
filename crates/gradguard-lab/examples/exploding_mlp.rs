//! Trains the lab's default exploding configurations with and without remedies and prints what
//! happened: `cargo run --release -p gradguard-lab --example exploding_mlp [-- TASK REMEDY…]`.

use gradguard_lab::{Remedy, RunConfig, TrainOptions, TrainOutcome, train};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let task = args.next().unwrap_or_else(|| "mlp".into()).parse()?;
    let mut remedies: Vec<String> = args.collect();
    if remedies.is_empty() {
        remedies = vec!["none".into(), "clip-global".into(), "guard".into()];
    }
    println!(
        "{:<28} {:>9} {:>10} {:>10} {:>8} {:>7}",
        "remedy", "outcome", "first", "final", "acc", "secs"
    );
    for spec in remedies {
        let config = RunConfig {
            remedies: Remedy::parse_list(&spec)?,
            ..RunConfig::for_task(task)
        };
        let TrainOutcome::Finished(s) = train(&config, &TrainOptions::default())? else {
            unreachable!("not interrupted")
        };
        let show = |v: Option<f64>| v.map_or("NaN".into(), |v| format!("{v:.4}"));
        println!(
            "{:<28} {:>9} {:>10} {:>10} {:>8} {:>7.1}",
            spec,
            s.outcome(),
            show(s.initial_loss),
            show(s.final_loss),
            show(s.accuracy),
            s.wall_time_s
        );
        if let Some(why) = &s.stopped {
            println!("    stopped: {why}");
        }
        if let Some(why) = &s.stopped {
            println!("    stopped: {why}");
        }
    }
    Ok(())
}
