//! The `corewire` binary: key tools now, the daemon later.

use std::process::ExitCode;

use clap::Parser as _;

mod cli;
mod keys_cmd;

use cli::{Cli, Command};

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
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("corewire {}: {err:#}", command.name());
            ExitCode::FAILURE
        }
    }
}

/// The daemon form. It is not built yet, so say so plainly and fail.
fn daemon(args: &cli::DaemonArgs) -> ExitCode {
    let ifname = args.ifname.as_deref().unwrap_or("IFNAME");
    eprintln!(
        "corewire: cannot run interface {ifname:?}: the daemon is not built yet in this version; \
         only `corewire genkey`, `corewire pubkey` and `corewire genpsk` work so far"
    );
    ExitCode::FAILURE
}
