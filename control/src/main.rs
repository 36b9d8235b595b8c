//! The `corewire` binary: the daemon (`corewire [-f] IFNAME`) and the key
//! tools, over the `corewire` library.

use std::process::ExitCode;

use clap::Parser as _;

use corewire::cli::{self, Cli, Command};
use corewire::{daemon, keys_cmd, stats_cmd};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Some(command) = cli.command else {
        return daemon(&cli.daemon);
    };
    let result = match command {
        Command::Genkey => keys_cmd::genkey(),
        Command::Pubkey => keys_cmd::pubkey(),
        Command::Genpsk => keys_cmd::genpsk(),
        Command::Stats(ref args) => stats_cmd::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("corewire {}: {err:#}", command.name());
            ExitCode::FAILURE
        }
    }
}

/// The daemon form.
fn daemon(args: &cli::DaemonArgs) -> ExitCode {
    daemon::run(args)
}
