//! The `session-queue` binary: a node, the command-line client, simulated miners and
//! the load generator, one subcommand each.

use std::io::Read;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use reqwest::Method;
use serde_json::{json, Value};
use session_queue::client::{miner, output, Client};
use session_queue::config::{args_with_config_file, LogFormat, NodeConfig};
use session_queue::{bench, node, shutdown};

// glibc malloc was a tenth of the leader's profile under load; mimalloc is cheaper.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "session-queue",
    version,
    about = "A Raft-replicated task queue for AI inference tasks"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

/// How the client reaches the cluster.
#[derive(Args, Clone, Debug)]
struct Target {
    /// Nodes to talk to (host:port of their API), tried in order on failure.
    #[arg(
        long,
        env = "SQ_NODES",
        value_delimiter = ',',
        default_value = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003"
    )]
    nodes: Vec<String>,
    /// API key, when the nodes require one.
    #[arg(long, env = "SQ_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Admin key, for `cluster add` and `cluster remove`.
    #[arg(long, env = "SQ_ADMIN_KEY", hide_env_values = true)]
    admin_key: Option<String>,
    /// Miner key, for miner registration (`miner simulate`); the API key otherwise.
    #[arg(long, env = "SQ_MINER_KEY", hide_env_values = true)]
    miner_key: Option<String>,
    /// The CA that signed the nodes' API certificates (PEM). Given, a node written
    /// `host:port` is reached over https (an `http://` URL stays plain).
    #[arg(long, env = "SQ_CA_FILE")]
    ca_file: Option<std::path::PathBuf>,
}

impl Target {
    fn client(&self) -> anyhow::Result<Client> {
        Client::with_ca_file(&self.nodes, self.api_key.clone(), self.ca_file.as_deref())
    }

    /// A client calling with the admin key (operator writes).
    fn admin_client(&self) -> anyhow::Result<Client> {
        Client::with_ca_file(&self.nodes, self.admin_key.clone(), self.ca_file.as_deref())
    }

    /// A client registering miners with the miner key, or the API key without one.
    fn miner_client(&self) -> anyhow::Result<Client> {
        Client::with_ca_file(
            &self.nodes,
            self.miner_key.clone().or_else(|| self.api_key.clone()),
            self.ca_file.as_deref(),
        )
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a node.
    Node(NodeConfig),
    /// Create, read or close a session.
    Session {
        #[command(flatten)]
        target: Target,
        #[command(subcommand)]
        command: SessionCmd,
    },
    /// Submit a task (payload as an argument, from --file, or from stdin), or many
    /// with --batch.
    Submit {
        #[command(flatten)]
        target: Target,
        session: String,
        payload: Option<String>,
        #[arg(long, conflicts_with = "batch")]
        file: Option<std::path::PathBuf>,
        #[arg(long)]
        priority: Option<i32>,
        #[arg(long, conflicts_with = "batch")]
        key: Option<String>,
        /// Submit many tasks from FILE (`-`: stdin): a JSON array or JSON lines, each
        /// a task as the API takes it (`{"payload": "<base64>", "priority": 1,
        /// "idempotency_key": "k"}`) or a string (the payload's text). Sent through
        /// `tasks:batch`, --batch-size tasks per request; prints `{"task_ids": [...]}`.
        #[arg(long, value_name = "FILE", conflicts_with = "payload")]
        batch: Option<String>,
        /// Most tasks per batch request (each request is all or nothing).
        #[arg(long, default_value_t = 1000, requires = "batch")]
        batch_size: usize,
    },
    /// Cancel a task that is not finished.
    Cancel {
        #[command(flatten)]
        target: Target,
        task: String,
    },
    /// Read a task.
    Get {
        #[command(flatten)]
        target: Target,
        task: String,
        /// Wait until the task is done.
        #[arg(long)]
        wait: bool,
        /// A read-index (linearizable) read.
        #[arg(long)]
        linearizable: bool,
    },
    /// Print every transition of a session's tasks as it happens, one JSON line each
    /// (`{"id", "event", "data"}`); on a broken stream, resume on the next node.
    Watch {
        #[command(flatten)]
        target: Target,
        session: String,
        /// Start after this event id (`<index>-<pos>`) instead of now.
        #[arg(long)]
        after: Option<String>,
    },
    /// Cluster status and membership.
    Cluster {
        #[command(flatten)]
        target: Target,
        #[command(subcommand)]
        command: ClusterCmd,
    },
    /// Simulated miners.
    Miner {
        #[command(flatten)]
        target: Target,
        #[command(subcommand)]
        command: MinerCmd,
    },
    /// The load generator.
    Bench(bench::BenchArgs),
    /// Write a throwaway CA and a certificate per node (for TLS in tests and demos):
    /// DIR/ca.pem, DIR/ca-key.pem, DIR/NAME.pem, DIR/NAME-key.pem (keys mode 0600).
    Certs {
        /// Where to write them; a CA already there is kept and signs the new ones.
        #[arg(long, default_value = "certs")]
        out: std::path::PathBuf,
        /// One certificate per name, valid for the name, 127.0.0.1 and localhost,
        /// for server and client authentication.
        #[arg(long, value_delimiter = ',', default_value = "node1,node2,node3")]
        nodes: Vec<String>,
        /// More names (host names or IP addresses) every certificate is valid for.
        #[arg(long, value_delimiter = ',')]
        san: Vec<String>,
    },
    /// Exit 0 when every node given answers GET /ready with 200 (a health check
    /// that speaks https too, e.g. in a container without curl).
    Ready {
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Subcommand)]
enum SessionCmd {
    /// Create a session; prints it.
    Create {
        #[arg(long)]
        redundancy: Option<u8>,
        #[arg(long)]
        quorum: Option<u8>,
        #[arg(long)]
        tag: Option<String>,
        #[arg(long)]
        max_nodes: Option<u32>,
        #[arg(long)]
        priority: Option<i32>,
        #[arg(long)]
        owner: Option<String>,
    },
    /// Read a session.
    Get { id: String },
    /// Close a session: cancels its unfinished tasks and releases its miners.
    Close { id: String },
}

#[derive(Subcommand)]
enum ClusterCmd {
    /// Members, leader, term, applied index per node.
    Status,
    /// Add a node (started without --initial-cluster) as a voter (needs --admin-key).
    Add { id: u64, api: String, peer: String },
    /// Remove a node (needs --admin-key).
    Remove { id: u64 },
}

#[derive(Subcommand)]
enum MinerCmd {
    /// Run simulated miners until interrupted.
    Simulate {
        #[arg(long, default_value_t = 3)]
        count: usize,
        #[arg(long, default_value_t = 4)]
        capacity: u32,
        #[arg(long, value_delimiter = ',')]
        tags: Vec<String>,
        /// Every n-th reveal of each miner is wrong (0: never).
        #[arg(long, default_value_t = 0)]
        wrong_every: u64,
        /// Simulated inference time per task, ms.
        #[arg(long, default_value_t = 0)]
        work_ms: u64,
        /// Heartbeat timeout to register with, ms (default: the node's); each miner
        /// heartbeats every quarter of it.
        #[arg(long)]
        heartbeat_timeout_ms: Option<u64>,
        /// Each miner ignores (never acks) its first this many assignments, as an
        /// unresponsive miner would, then serves the rest.
        #[arg(long, default_value_t = 0)]
        ignore_first: u32,
        /// When the cluster declares a miner gone, exit with an error instead of
        /// registering a replacement.
        #[arg(long)]
        no_replace: bool,
        /// Step all assignments due at once in one `POST /v1/miners/{id}/steps`
        /// call per round, instead of one call per step.
        #[arg(long)]
        batch_steps: bool,
    },
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Plain => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn print(v: &Value) -> anyhow::Result<()> {
    Ok(output::json(v)?)
}

/// Errors print as one line; a closed stdout (`| head`) ends the program quietly.
fn main() -> ExitCode {
    output::exit(start())
}

fn start() -> anyhow::Result<()> {
    if let Some(refusal) = session_queue::cpu::refusal() {
        anyhow::bail!(refusal);
    }
    // Before any thread starts: see the module for why.
    session_queue::huge_pages::disable_transparent_huge_pages();
    let args = args_with_config_file(std::env::args().collect())?;
    let cli = Cli::parse_from(args);
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Cmd::Node(config) = &cli.command {
        if let Some(n) = config.worker_threads {
            runtime.worker_threads(n.max(1));
        }
    }
    runtime.enable_all().build()?.block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Cmd::Node(mut config) => {
            init_logging(config.log_format);
            config.read_secret_file()?;
            node::run(config, shutdown::signals()).await
        }
        Cmd::Bench(args) => {
            init_logging(LogFormat::Plain);
            bench::run(args).await
        }
        Cmd::Ready { target } => {
            let client = target.client()?;
            let mut not_ready = Vec::new();
            for node in client.nodes() {
                let answer = client
                    .http()
                    .get(format!("{node}/ready"))
                    .timeout(std::time::Duration::from_secs(3))
                    .send()
                    .await;
                match answer {
                    Ok(r) if r.status().is_success() => println!("{node}: ready"),
                    Ok(r) => not_ready.push(format!("{node}: {}", r.status())),
                    Err(e) => not_ready.push(format!("{node}: {e}")),
                }
            }
            if !not_ready.is_empty() {
                anyhow::bail!("not ready: {}", not_ready.join("; "));
            }
            Ok(())
        }
        Cmd::Certs { out, nodes, san } => {
            let names: Vec<&str> = nodes.iter().map(String::as_str).collect();
            let sans: Vec<&str> = san.iter().map(String::as_str).collect();
            let written = session_queue::tls::certs::generate(&out, &names, &sans)?;
            println!(
                "CA certificate: {} (key {})",
                written.ca.display(),
                written.ca_key.display()
            );
            for (name, (cert, key)) in nodes.iter().zip(&written.nodes) {
                println!("{name}: {} (key {})", cert.display(), key.display());
            }
            Ok(())
        }
        Cmd::Session { target, command } => {
            let c = target.client()?;
            let v = match command {
                SessionCmd::Create {
                    redundancy,
                    quorum,
                    tag,
                    max_nodes,
                    priority,
                    owner,
                } => {
                    let mut spec = json!({});
                    for (k, v) in [
                        ("redundancy", redundancy.map(Value::from)),
                        ("quorum", quorum.map(Value::from)),
                        ("tag", tag.map(Value::from)),
                        ("max_nodes", max_nodes.map(Value::from)),
                        ("priority", priority.map(Value::from)),
                        ("owner", owner.map(Value::from)),
                    ] {
                        if let Some(v) = v {
                            spec[k] = v;
                        }
                    }
                    c.ok(Method::POST, "/v1/sessions", Some(&spec), None)
                        .await?
                }
                SessionCmd::Get { id } => {
                    c.ok(Method::GET, &format!("/v1/sessions/{id}"), None, None)
                        .await?
                }
                SessionCmd::Close { id } => {
                    c.ok(
                        Method::POST,
                        &format!("/v1/sessions/{id}/close"),
                        None,
                        None,
                    )
                    .await?
                }
            };
            print(&v)
        }
        Cmd::Submit {
            target,
            session,
            batch: Some(batch),
            batch_size,
            priority,
            ..
        } => submit_batch(&target.client()?, &session, &batch, batch_size, priority).await,
        Cmd::Submit {
            target,
            session,
            payload,
            file,
            priority,
            key,
            ..
        } => {
            let bytes = match (payload, file) {
                (Some(p), _) => p.into_bytes(),
                (None, Some(f)) => {
                    std::fs::read(&f).with_context(|| format!("reading {}", f.display()))?
                }
                (None, None) => {
                    let mut buf = Vec::new();
                    std::io::stdin().read_to_end(&mut buf)?;
                    buf
                }
            };
            let mut body = json!({"payload": session_queue::client::b64(&bytes)});
            if let Some(p) = priority {
                body["priority"] = json!(p);
            }
            if let Some(k) = key {
                body["idempotency_key"] = json!(k);
            }
            let v = target
                .client()?
                .ok(
                    Method::POST,
                    &format!("/v1/sessions/{session}/tasks"),
                    Some(&body),
                    None,
                )
                .await?;
            print(&v)
        }
        Cmd::Cancel { target, task } => {
            let v = target
                .client()?
                .ok(
                    Method::POST,
                    &format!("/v1/tasks/{task}/cancel"),
                    None,
                    None,
                )
                .await?;
            print(&v)
        }
        Cmd::Get {
            target,
            task,
            wait,
            linearizable,
        } => {
            let mut query = Vec::new();
            if wait {
                query.push("wait=completed&timeout=60s");
            }
            if linearizable {
                query.push("consistency=linearizable");
            }
            let q = if query.is_empty() {
                String::new()
            } else {
                format!("?{}", query.join("&"))
            };
            let mut v = target.client()?.task(&task, &q).await?;
            // Show a text result as text too.
            if let Some(text) = v["result"]
                .as_str()
                .and_then(session_queue::client::unb64)
                .and_then(|b| String::from_utf8(b).ok())
            {
                v["result_text"] = json!(text);
            }
            print(&v)
        }
        Cmd::Watch {
            target,
            session,
            after,
        } => watch(&target, &session, after).await,
        Cmd::Cluster { target, command } => {
            let c = match command {
                ClusterCmd::Status => target.client()?,
                ClusterCmd::Add { .. } | ClusterCmd::Remove { .. } => target.admin_client()?,
            };
            let v = match command {
                ClusterCmd::Status => c.ok(Method::GET, "/v1/cluster", None, None).await?,
                ClusterCmd::Add { id, api, peer } => {
                    let body = json!({"id": id, "api": api, "peer": peer});
                    c.ok(Method::POST, "/v1/cluster/members", Some(&body), None)
                        .await?
                }
                ClusterCmd::Remove { id } => {
                    c.ok(
                        Method::DELETE,
                        &format!("/v1/cluster/members/{id}"),
                        None,
                        None,
                    )
                    .await?
                }
            };
            print(&v)
        }
        Cmd::Miner {
            target,
            command:
                MinerCmd::Simulate {
                    count,
                    capacity,
                    tags,
                    wrong_every,
                    work_ms,
                    heartbeat_timeout_ms,
                    ignore_first,
                    no_replace,
                    batch_steps,
                },
        } => {
            init_logging(LogFormat::Plain);
            let client = target.miner_client()?;
            let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
            let stats = Arc::new(miner::MinerStats::default());
            let mut miners = tokio::task::JoinSet::new();
            for i in 0..count {
                let spec = miner::MinerSpec {
                    name: format!("sim-{i}"),
                    capacity,
                    tags: tags.clone(),
                    wrong_every,
                    work: std::time::Duration::from_millis(work_ms),
                    heartbeat_timeout: heartbeat_timeout_ms.map(std::time::Duration::from_millis),
                    ignore_first,
                    batch_steps,
                };
                let (client, stats, stop) = (client.pinned(i), stats.clone(), stop_rx.clone());
                miners.spawn(async move {
                    if no_replace {
                        let run = miner::run(client, spec.clone(), stats, stop).await?;
                        return match run.ended {
                            miner::Ended::Stopped => Ok(()),
                            miner::Ended::Gone(why) => Err(anyhow::anyhow!(
                                "miner {} ({}) was declared gone: {why}",
                                spec.name,
                                run.id.unwrap_or_default()
                            )),
                        };
                    }
                    miner::run_replacing(client, spec, stats, stop, |spec, run| {
                        let miner::Ended::Gone(why) = &run.ended else {
                            return;
                        };
                        tracing::warn!(
                            "miner {} ({}) was declared gone: {why}; registering a replacement",
                            spec.name,
                            run.id.as_deref().unwrap_or("?")
                        );
                    })
                    .await?;
                    Ok::<(), anyhow::Error>(())
                });
            }
            eprintln!("{count} simulated miners running; Ctrl-C to stop");
            // Until interrupted, or until one miner cannot go on (registration
            // refused; or declared gone with --no-replace).
            let mut failure = None;
            tokio::select! {
                _ = shutdown::signals() => {}
                Some(joined) = miners.join_next() => {
                    failure = Some(joined.map_err(anyhow::Error::from).and_then(|r| r).err());
                }
            }
            stop_tx.send_replace(true);
            while let Some(joined) = miners.join_next().await {
                if let Ok(Err(e)) = joined {
                    failure.get_or_insert(Some(e));
                }
            }
            print(&stats.to_json())?;
            match failure.flatten() {
                Some(e) => Err(e.context("a simulated miner stopped")),
                None => Ok(()),
            }
        }
    }
}

/// Streams a session's events to stdout, one JSON line each, resuming on the next
/// node (with the last event's id) when a stream breaks; reconnects are told on
/// stderr.
async fn watch(target: &Target, session: &str, after: Option<String>) -> anyhow::Result<()> {
    if let Some(id) = &after {
        id.parse::<session_queue::store::EventId>()
            .map_err(anyhow::Error::msg)?;
    }
    target
        .client()?
        .watch(
            session,
            after,
            |event| Ok(output::line(&event.to_json().to_string())?),
            |notice| eprintln!("watch: {notice}"),
        )
        .await
}

/// Submits the tasks of a JSON array or JSON lines file (`-`: stdin) through
/// `tasks:batch`, `size` per request; prints every task id. A request that fails
/// ends the run: the ids of the requests before it are printed first.
async fn submit_batch(
    client: &Client,
    session: &str,
    from: &str,
    size: usize,
    priority: Option<i32>,
) -> anyhow::Result<()> {
    let text = if from == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading tasks from stdin")?;
        text
    } else {
        std::fs::read_to_string(from).with_context(|| format!("reading {from}"))?
    };
    let mut tasks = batch_tasks(&text)?;
    if let Some(p) = priority {
        for task in &mut tasks {
            if task.get("priority").is_none() {
                task["priority"] = json!(p);
            }
        }
    }
    let mut ids: Vec<Value> = Vec::with_capacity(tasks.len());
    for chunk in tasks.chunks(size.max(1)) {
        let body = json!({"tasks": chunk});
        let path = format!("/v1/sessions/{session}/tasks:batch");
        match client.ok(Method::POST, &path, Some(&body), None).await {
            Ok(v) => ids.extend(v["task_ids"].as_array().cloned().unwrap_or_default()),
            Err(e) if ids.is_empty() => return Err(e.into()),
            Err(e) => {
                print(&json!({"task_ids": ids}))?;
                anyhow::bail!(
                    "{e} (after {} of {} tasks were submitted: their ids are printed above)",
                    ids.len(),
                    tasks.len()
                );
            }
        }
    }
    print(&json!({"task_ids": ids}))
}

/// The tasks of a batch file: a JSON array, or one JSON value per line; each a task
/// object, or a string (the payload's text, base64-encoded here).
fn batch_tasks(text: &str) -> anyhow::Result<Vec<Value>> {
    let items: Vec<(usize, Value)> = if text.trim_start().starts_with('[') {
        let all: Vec<Value> =
            serde_json::from_str(text).context("the batch is not a JSON array")?;
        all.into_iter()
            .enumerate()
            .map(|(i, v)| (i + 1, v))
            .collect()
    } else {
        let mut items = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let v = serde_json::from_str(line)
                .with_context(|| format!("line {} is not JSON", i + 1))?;
            items.push((i + 1, v));
        }
        items
    };
    if items.is_empty() {
        anyhow::bail!("no tasks in the batch");
    }
    items
        .into_iter()
        .map(|(n, item)| match item {
            Value::String(text) => Ok(json!({"payload": session_queue::client::b64(text.as_bytes())})),
            Value::Object(o) if o.contains_key("payload") => Ok(Value::Object(o)),
            _ => anyhow::bail!(
                "task {n}: expected an object with a payload (base64) or a string (the payload's text)"
            ),
        })
        .collect()
}
