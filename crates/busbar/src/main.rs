//! `busbar`: serve a node, and talk to one from the shell.

mod commands;
mod data;
mod idle_spin;
mod serve;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "busbar",
    version,
    about = "Busbar: realtime data server and its command-line client"
)]
struct Cli {
    /// Client config file (address, CA, credential); `busbar serve` writes
    /// one as <data>/admin.json.
    #[arg(
        long,
        global = true,
        env = "BUSBAR_CONFIG",
        default_value = "busbar-data/admin.json"
    )]
    config: PathBuf,
    /// Deadline of each call in seconds.
    #[arg(long, global = true, env = "BUSBAR_TIMEOUT")]
    timeout: Option<f64>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a node (TLS and authentication on; embedded storage).
    Serve(Box<serve::ServeArgs>),
    /// Show the node's status.
    Status,
    /// Key-pair identities.
    #[command(subcommand)]
    Identity(commands::IdentityCommand),
    /// Password users.
    #[command(subcommand)]
    User(commands::UserCommand),
    /// API tokens of the calling identity.
    #[command(subcommand)]
    Token(commands::TokenCommand),
    /// Group membership (grant to "group:<name>").
    #[command(subcommand)]
    Group(commands::GroupCommand),
    /// List a folder (or everything below it with -r).
    Ls {
        #[arg(default_value = "/")]
        path: String,
        #[arg(short, long)]
        recursive: bool,
    },
    /// Create a folder.
    Mkdir {
        path: String,
        /// Create missing parent folders too, and succeed if the folder exists.
        #[arg(short, long)]
        parents: bool,
    },
    /// Delete a resource (-r: a folder and everything in it).
    Rm {
        path: String,
        #[arg(short, long)]
        recursive: bool,
    },
    /// Move or rename a resource.
    Mv { from: String, to: String },
    /// Grant a right (read, write, admin) on a resource to an identity or group:<name>.
    Grant {
        path: String,
        principal: String,
        right: commands::RightArg,
    },
    /// Remove the grant set on a resource for an identity or group:<name>.
    Revoke { path: String, principal: String },
    /// Show the grants on a resource (--effective: with inherited ones).
    Grants {
        path: String,
        #[arg(long)]
        effective: bool,
    },
    /// Rooms: create, emit, listen.
    #[command(subcommand)]
    Room(commands::RoomCommand),
    /// Wires: create, pub (stdin to wire), sub (wire to stdout).
    #[command(subcommand)]
    Wire(commands::WireCommand),
    /// SQL databases.
    #[command(subcommand)]
    Db(commands::DbCommand),
    /// Mesh services: create, ls (live services and their providers).
    #[command(subcommand)]
    Service(commands::ServiceCommand),
    /// Transport sessions: push and pop payloads by topic (two shells can
    /// talk through one).
    #[command(subcommand)]
    Session(commands::SessionCommand),
    /// Run one SQL statement on a database; prints an aligned table.
    Sql {
        /// The database's path, e.g. /home/admin/shop
        database: String,
        /// One statement; use ?, ?NNN or :name placeholders for values.
        sql: String,
        /// A parameter: VALUE (positional, in order) or NAME=VALUE (named).
        /// VALUE is JSON when it parses (42, 1.5, true, null, "text"), else text.
        #[arg(long = "param")]
        params: Vec<String>,
        /// Print the rows as JSON (one array) instead of a table.
        #[arg(long, conflicts_with = "arrow")]
        json: bool,
        /// Write the rows to FILE as an Arrow IPC stream instead of printing them.
        #[arg(long, value_name = "FILE")]
        arrow: Option<std::path::PathBuf>,
    },
    /// Time series: create, write FILE, read, ls.
    #[command(subcommand)]
    Ts(data::TsCommand),
    /// Stored procedures: create, run, list, drop.
    #[command(subcommand)]
    Proc(data::ProcCommand),
    /// Call any RPC by full method name with a JSON request; streaming
    /// methods print one JSON response per line (client-streaming ones read
    /// further requests from stdin, one JSON per line).
    Call {
        /// e.g. busbar.v1.Node/Status
        method: String,
        #[arg(default_value = "{}")]
        json: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // arrow-ipc panics on some hostile bytes; busbar-ipc catches those and
    // refuses the stream, and this keeps them out of the log.
    busbar_ipc::quiet_caught_panics();
    let default_level = if matches!(cli.command, Command::Serve(_)) {
        "info"
    } else {
        "warn"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("busbar: error: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve::run(*args).await,
            command => commands::run(&cli.config, cli.timeout, command).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("busbar: error: {error}");
            ExitCode::FAILURE
        }
    }
}
