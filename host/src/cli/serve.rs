//! `speedrun serve`: the dashboard.

use super::args::DbArg;
use anyhow::Result;
use clap::Args;
use std::io::Write;
use std::net::IpAddr;

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub db: DbArg,
    /// The address to listen on (the default reaches this machine only).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// The port (0: any free one; the line it prints says which).
    #[arg(long, default_value_t = 8700)]
    pub port: u16,
}

pub fn serve(a: ServeArgs) -> Result<()> {
    let store = a.db.open()?;
    crate::serve::serve(
        crate::serve::ServeOptions {
            store,
            addr: (a.host, a.port).into(),
        },
        |addr| {
            // One line a script (or the browser test) can read the address from.
            println!("serving the dashboard at http://{addr}/ (Ctrl-C stops it)");
            let _ = std::io::stdout().flush();
        },
    )
}
