//! tidings-swarm: a load-test client swarm for the tidings relay.

mod cli;
mod conn;
mod control;
mod fleet;
mod floor;
mod frame;
mod handshake;
mod http;
mod inflate;
mod plot;
mod publisher;
mod report;
mod resume;
mod run;
mod scan;
mod stats;
mod storm;
mod successor;
mod swarm;
mod sys;

use clap::Parser;

fn main() {
    let cli = cli::Cli::parse();
    let result = match cli.mode {
        cli::Mode::Fanout(a) => run::fanout(a),
        cli::Mode::Idle(a) => run::idle(a),
        cli::Mode::Sweep(a) => run::sweep(a),
        cli::Mode::Storm(a) => run::storm(a),
        cli::Mode::Floor(a) => floor::run(a),
        cli::Mode::Worker { cfg } => fleet::worker_main(&cfg),
    };
    if let Err(e) = result {
        eprintln!("tidings-swarm: {e}");
        std::process::exit(1);
    }
}
