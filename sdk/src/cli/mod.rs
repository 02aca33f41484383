//! The `eddy` command line: a REST client of the JobManager (`submit`, `list`,
//! `status`, `cancel`, `savepoint`, `stop`, `checkpoints`, `exceptions`,
//! `overview`, `taskmanagers`, `cluster`) and `eddy local`, which runs
//! a whole cluster on this machine as separate processes.
//!
//! Exit codes: 0 success, 1 a local failure (unreadable file, no server), and
//! the error table's code for errors the server reports (see `ErrorCode::exit_code`).

mod bench;
mod cluster;
mod local;
mod members;
mod render;
mod savepoint;

use crate::client::{self, Client};
use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "eddy",
    version,
    about = "Eddy: distributed stream processing",
    propagate_version = true
)]
pub struct Cli {
    /// The JobManager's REST URL, or every JobManager's of a group,
    /// comma-separated (the next is tried when one does not answer).
    #[arg(
        long,
        global = true,
        env = "EDDY_URL",
        default_value = "http://127.0.0.1:8081"
    )]
    url: String,
    /// Print the server's JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Submit a job spec (YAML or JSON).
    Submit {
        /// The spec file, or `-` for standard input.
        file: PathBuf,
        /// Start from this savepoint or retained checkpoint directory.
        #[arg(long = "from", value_name = "PATH")]
        from: Option<String>,
        /// With --from: drop the state of nodes the job no longer has.
        #[arg(long, requires = "from")]
        allow_non_restored_state: bool,
    },
    /// List jobs.
    List,
    /// Show one job: state, vertices, records, backpressure.
    Status { job_id: String },
    /// Cancel a job.
    Cancel { job_id: String },
    /// Take a savepoint of a running job and wait for it.
    Savepoint {
        job_id: String,
        /// The directory the savepoint goes in (default: the job's
        /// checkpoint storage + `/savepoints`).
        #[arg(long, value_name = "DIR")]
        target: Option<String>,
    },
    /// Stop a job at a savepoint (wait for the savepoint).
    Stop {
        job_id: String,
        /// Required: stopping always takes a savepoint (else use `cancel`).
        #[arg(long, required = true)]
        savepoint: bool,
        #[arg(long, value_name = "DIR")]
        target: Option<String>,
    },
    /// A job's checkpoint statistics and retained checkpoints.
    Checkpoints { job_id: String },
    /// A job's failures, newest first, and what was done about each.
    Exceptions { job_id: String },
    /// Cluster overview: TaskManagers, slots, jobs.
    Overview,
    /// List TaskManagers.
    Taskmanagers,
    /// The JobManager group: status (default), `add` or `remove` a member.
    Cluster(members::ClusterArgs),
    /// Run a JobManager and TaskManagers on this machine as separate processes.
    Local(local::LocalArgs),
    /// Run the Nexmark suite on a local cluster and report throughput,
    /// CPU, memory, network and latency per query.
    Bench(bench::BenchArgs),
}

/// Runs the CLI and returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = e
                .downcast_ref::<client::Error>()
                .and_then(|c| c.code())
                .map_or(1, |c| c.exit_code());
            match e.downcast_ref::<client::Error>() {
                Some(client::Error::Api(api)) => eprintln!("{}", render::api_error(api)),
                _ => eprintln!("error: {e:#}"),
            }
            ExitCode::from(u8::try_from(code).unwrap_or(1))
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let client = Client::new(&cli.url);
    match cli.command {
        Command::Submit {
            file,
            from,
            allow_non_restored_state,
        } => {
            let text = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())
                    .context("cannot read the spec from standard input")?
            } else {
                std::fs::read_to_string(&file)
                    .with_context(|| format!("cannot read {}", file.display()))?
            };
            let query = crate::rest::SubmitQuery {
                restore_from: from,
                allow_non_restored_state,
            };
            let resp = client.submit_with(&text, &query).await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&resp)?);
            } else {
                println!("submitted job {}", resp.job_id);
            }
        }
        Command::List => {
            let jobs = client.jobs().await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&jobs)?);
            } else {
                print!("{}", render::jobs(&jobs));
            }
        }
        Command::Status { job_id } => {
            let job = client.job(&job_id).await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&job)?);
            } else {
                print!("{}", render::job(&job));
            }
        }
        Command::Cancel { job_id } => {
            let resp = client.cancel(&job_id).await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&resp)?);
            } else {
                println!("cancelling job {job_id}");
            }
        }
        Command::Savepoint { job_id, target } => {
            let accepted = client.savepoint(&job_id, target).await?;
            savepoint::wait(&client, &job_id, &accepted.request_id, cli.json).await?;
        }
        Command::Stop {
            job_id,
            savepoint: _,
            target,
        } => {
            let accepted = client.stop_with_savepoint(&job_id, target).await?;
            savepoint::wait(&client, &job_id, &accepted.request_id, cli.json).await?;
        }
        Command::Checkpoints { job_id } => {
            let stats = client.checkpoints(&job_id).await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&stats)?);
            } else {
                print!("{}", savepoint::render_checkpoints(&stats));
            }
        }
        Command::Exceptions { job_id } => {
            let list = client.exceptions(&job_id).await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                print!("{}", savepoint::render_exceptions(&list));
            }
        }
        Command::Overview => {
            let o = client.overview().await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&o)?);
            } else {
                print!("{}", render::overview(&o));
            }
        }
        Command::Taskmanagers => {
            let tms = client.taskmanagers().await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&tms)?);
            } else {
                print!("{}", render::taskmanagers(&tms));
            }
        }
        Command::Cluster(args) => members::run(&client, args, cli.json).await?,
        Command::Local(args) => local::run(args).await?,
        Command::Bench(args) => bench::run(args).await?,
    }
    Ok(())
}
