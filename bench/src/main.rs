//! `busbar-bench`: Busbar side by side with bare tonic, NATS and raw TCP on
//! loopback (and pyarrow.flight / ADBC for the data scenarios), every system measured in the same run; prints Busbar ÷ peer
//! ratios and writes `bench/results/latest.json`. See bench/README.md.
//!
//! ```text
//! busbar-bench [--quick] [--only unary,mesh,fanout,wire,timeseries,sql,python,rooms,scale,cluster,gateway,wsfanout] [--busbar PATH] [--out DIR]
//! ```

mod cluster;
mod ctx;
mod fanout;
mod gateway;
mod mesh;
mod peers;
mod procs;
mod python;
mod report;
mod rooms;
mod scale;
mod sql;
mod stats;
mod timeseries;
mod tls;
mod unary;
mod wire;
mod ws_fanout;

use procs::Result;
use std::path::PathBuf;
use std::time::Instant;

const SCENARIOS: [&str; 12] = [
    "unary",
    "mesh",
    "fanout",
    "wire",
    "timeseries",
    "sql",
    "python",
    "rooms",
    "scale",
    "cluster",
    "gateway",
    "wsfanout",
];

struct Options {
    quick: bool,
    only: Vec<String>,
    busbar: PathBuf,
    out: PathBuf,
}

const USAGE: &str = "usage: busbar-bench [--quick] [--only unary,mesh,fanout,wire,timeseries,sql,python,rooms,scale,cluster,gateway,wsfanout] [--busbar PATH] [--out DIR]";

fn parse_options(args: &[String]) -> Result<Options> {
    let exe = std::env::current_exe()?;
    let mut options = Options {
        quick: false,
        only: SCENARIOS.iter().map(|s| s.to_string()).collect(),
        busbar: exe.with_file_name("busbar"),
        out: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("results"),
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--quick" => options.quick = true,
            "--only" => {
                let list = it.next().ok_or("--only needs a list")?;
                options.only = list.split(',').map(|s| s.trim().to_string()).collect();
                if let Some(bad) = options
                    .only
                    .iter()
                    .find(|s| !SCENARIOS.contains(&s.as_str()))
                {
                    return Err(format!("unknown scenario {bad:?}; {USAGE}").into());
                }
            }
            "--busbar" => options.busbar = it.next().ok_or("--busbar needs a path")?.into(),
            "--out" => options.out = it.next().ok_or("--out needs a directory")?.into(),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}; {USAGE}").into()),
        }
    }
    Ok(options)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = if args.first().map(String::as_str) == Some("peer-server") {
        peers::serve_main(&args[1..])
    } else if args.first().map(String::as_str) == Some("mesh-peer") {
        mesh::peer_main(&args[1..])
    } else {
        parse_options(&args).and_then(|options| {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(run(options))
        })
    };
    if let Err(error) = result {
        eprintln!("busbar-bench: {error}");
        std::process::exit(1);
    }
}

async fn run(options: Options) -> Result<()> {
    let started = Instant::now();
    let fd_limit = procs::raise_fd_limit();
    let machine = report::machine();
    let date = report::utc_now();
    let mode = if options.quick { "quick" } else { "full" };
    eprintln!(
        "bench: {mode} run on {}; open-files limit {fd_limit}",
        report::machine_line(&machine)
    );

    let work = tempfile::Builder::new().prefix("busbar-bench-").tempdir()?;
    let tls = tls::generate(work.path())?;

    // Children are spawned here, on the main thread (see procs::spawn).
    let busbar = procs::Busbar::start(&options.busbar, &work.path().join("busbar"))?;
    let nats_binary = procs::find_nats_server();
    let (nats, nats_skipped) = match &nats_binary {
        Some(binary) => match procs::Nats::start(binary, &tls, &work.path().join("nats.log")) {
            Ok(nats) => (Some(nats), None),
            Err(error) => (
                None,
                Some(format!(
                    "NATS rows skipped: nats-server failed to start: {error}"
                )),
            ),
        },
        None => (
            None,
            Some(
                "NATS rows skipped: nats-server is not installed (apt-get install -y nats-server)"
                    .to_string(),
            ),
        ),
    };
    if let Some(reason) = &nats_skipped {
        eprintln!("bench: {reason}");
    }
    let peers = procs::Peers::start(&tls, nats.as_ref().map(|n| n.url.as_str()))?;
    if nats.is_some() && !peers.nats_responder {
        return Err("the NATS responder did not start (see peer-server's message above)".into());
    }

    let admin = busbar_client::Client::from_config_file(&busbar.admin_config).await?;
    let (token, _) = admin.create_token("bench", None).await?;
    let ctx = ctx::Ctx {
        quick: options.quick,
        busbar_config: busbar_client::ClientConfig::from_file(&busbar.admin_config)?,
        busbar_token: token,
        admin,
        tls: tls.clone(),
        tonic_address: peers.tonic_address.clone(),
        nats_url: nats.as_ref().map(|n| n.url.clone()),
        nats_skipped: nats_skipped.clone(),
        nats_binary: nats.as_ref().and(nats_binary.clone()),
        busbar_binary: options.busbar.clone(),
        busbar_pid: busbar.guard.pid(),
        work_dir: work.path().to_path_buf(),
        base: Instant::now(),
    };
    eprintln!(
        "bench: busbar {} (pid {}), tonic {} and {} (peer-server pid {})",
        busbar.address,
        busbar.guard.pid(),
        peers.tonic_address,
        nats.as_ref().map_or("no NATS".to_string(), |n| format!(
            "nats {} (pid {})",
            n.url,
            n.guard.pid()
        )),
        peers.guard.pid()
    );

    let mut rows = Vec::new();
    for scenario in SCENARIOS {
        if !options.only.iter().any(|s| s == scenario) {
            continue;
        }
        let scenario_started = Instant::now();
        let result = match scenario {
            "unary" => unary::run(&ctx).await,
            "mesh" => mesh::run(&ctx).await,
            "fanout" => fanout::run(&ctx).await,
            "wire" => wire::run(&ctx).await,
            "timeseries" => timeseries::run(&ctx).await,
            "sql" => sql::run(&ctx).await,
            "python" => python::run(&ctx).await,
            "rooms" => rooms::run(&ctx).await,
            "cluster" => cluster::run(&ctx).await,
            "gateway" => gateway::run(&ctx).await,
            "wsfanout" => ws_fanout::run(&ctx).await,
            _ => scale::run(&ctx, fd_limit).await,
        };
        match result {
            Ok(scenario_rows) => rows.extend(scenario_rows),
            Err(error) => eprintln!("bench: scenario {scenario} failed: {error}"),
        }
        eprintln!(
            "bench: {scenario} took {:.1} s",
            scenario_started.elapsed().as_secs_f64()
        );
    }
    drop(ctx);
    drop(peers);
    drop(nats);
    drop(busbar);

    let table = report::table(&rows);
    println!();
    println!(
        "Busbar benchmark ({mode} run, {date}): ratios are Busbar ÷ peer; the \"better\" column says which direction is better for the figure."
    );
    println!("Machine: {}", report::machine_line(&machine));
    if let Some(reason) = &nats_skipped {
        println!("{reason}");
    }
    println!();
    println!("{table}");
    println!();
    let mut notes: Vec<&String> = Vec::new();
    for row in &rows {
        for note in &row.notes {
            if !notes.contains(&note) {
                notes.push(note);
            }
        }
    }
    if !notes.is_empty() {
        println!("Notes:");
        for note in notes {
            println!("- {note}");
        }
    }

    std::fs::create_dir_all(&options.out)?;
    let path = options.out.join("latest.json");
    let json = report::json(&rows, options.quick, &date, &machine);
    std::fs::write(&path, serde_json::to_string_pretty(&json)? + "\n")?;
    println!();
    println!(
        "wrote {} ({} rows) in {:.0} s",
        path.display(),
        rows.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
