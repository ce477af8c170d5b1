//! The AMQP load generator of `benches/compare.sh`: publishes 256-byte messages to a
//! RabbitMQ quorum queue with publisher confirms, one message in flight per
//! connection, and prints one JSON line in the shape of the wrk rows
//! (`WRK_JSON {"requests", "seconds", "rps", "errors", "p50_ms", ...}`), so the
//! report puts RabbitMQ beside etcd and Session Queue measured the same way: each
//! connection sends a request and waits for its acknowledgement (the broker's
//! confirm, i.e. the message is on a majority of the queue's members) before the
//! next.
//!
//!   cargo bench --bench amqp -- --uri amqp://127.0.0.1:5672/%2f -c 64 -d 10
//!
//! Connections are spread round-robin over the `--uri` values (publishing through a
//! follower node costs a hop, as it does for etcd and for us), and every connection
//! has its own channel. The queue is declared durable with `x-queue-type: quorum`.

use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions, QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};

#[derive(Parser, Debug)]
struct Args {
    /// Broker URIs; connections go to them in turn.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "amqp://127.0.0.1:5672/%2f"
    )]
    uri: Vec<String>,
    /// Connections, each with one message in flight.
    #[arg(short = 'c', long, default_value_t = 1)]
    connections: usize,
    /// Seconds to run.
    #[arg(short = 'd', long, default_value_t = 10)]
    seconds: u64,
    /// Message size, bytes.
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// The quorum queue to publish to (declared if missing, purged first).
    #[arg(long, default_value = "sq-compare")]
    queue: String,
    // `cargo bench` passes `--bench`; accept and ignore it.
    #[arg(long, hide = true)]
    bench: bool,
}

/// What one connection measured.
struct Outcome {
    latencies: Histogram<u64>,
    errors: u64,
}

async fn connection(
    uri: String,
    queue: String,
    size: usize,
    until: Instant,
) -> anyhow::Result<Outcome> {
    let conn = Connection::connect(&uri, ConnectionProperties::default()).await?;
    let channel = conn.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let payload = vec![b'x'; size];
    let mut latencies = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut errors = 0;
    let properties = BasicProperties::default().with_delivery_mode(2);
    while Instant::now() < until {
        let started = Instant::now();
        let confirm = channel
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                &payload,
                properties.clone(),
            )
            .await?
            .await?;
        if confirm.is_ack() {
            latencies.record(started.elapsed().as_micros().max(1) as u64)?;
        } else {
            errors += 1;
        }
    }
    let _ = channel.close(200, "done".into()).await;
    let _ = conn.close(200, "done".into()).await;
    Ok(Outcome { latencies, errors })
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let setup = Connection::connect(&args.uri[0], ConnectionProperties::default()).await?;
    let channel = setup.create_channel().await?;
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    channel
        .queue_declare(
            args.queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            arguments,
        )
        .await?;
    channel
        .queue_purge(args.queue.as_str().into(), QueuePurgeOptions::default())
        .await?;

    let started = Instant::now();
    let until = started + Duration::from_secs(args.seconds);
    let mut runs = Vec::new();
    for i in 0..args.connections {
        let uri = args.uri[i % args.uri.len()].clone();
        runs.push(tokio::spawn(connection(
            uri,
            args.queue.clone(),
            args.size,
            until,
        )));
    }
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut errors = 0;
    for run in runs {
        match run.await? {
            Ok(outcome) => {
                all.add(&outcome.latencies)?;
                errors += outcome.errors;
            }
            Err(e) => {
                eprintln!("connection failed: {e}");
                errors += 1;
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    // Leave the queue empty for the next row (its messages stay on disk otherwise).
    let _ = channel
        .queue_purge(args.queue.as_str().into(), QueuePurgeOptions::default())
        .await;
    let ms = |q: f64| all.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "WRK_JSON {{\"requests\": {}, \"seconds\": {:.3}, \"rps\": {:.1}, \"errors\": {}, \
         \"p50_ms\": {:.3}, \"p90_ms\": {:.3}, \"p99_ms\": {:.3}, \"p999_ms\": {:.3}, \
         \"max_ms\": {:.3}, \"mean_ms\": {:.3}}}",
        all.len(),
        secs,
        all.len() as f64 / secs,
        errors,
        ms(0.5),
        ms(0.9),
        ms(0.99),
        ms(0.999),
        all.max() as f64 / 1000.0,
        all.mean() / 1000.0
    );
    Ok(())
}
