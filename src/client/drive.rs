//! The I/O half of a simulated miner's drives (the rules are in [`super::driver`]):
//! [`drive`] takes the steps open on one assignment, one call each
//! (`POST /v1/tasks/{id}/ack`, `/precommit`, `/commit`); [`drive_many`] takes the
//! steps open on many assignments together, one `POST /v1/miners/{id}/steps` call
//! per round (all acks, then all precommits, then all reveals of a list), so a
//! miner holding n assignments makes about three calls where it made 3n. Both
//! judge each step's answer the same way ([`Going::settle`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rand::RngCore;
use reqwest::Method;
use serde::{Deserialize, Serialize};

use super::driver::{
    next_step, Ctx, Drive, DriveEnd, Outcome, Secret, Slot, Step, StepBody, Updated, View,
};
use super::miner::{infer, is_gone};
use super::{b64, unb64, ClientError};
use crate::machine::sha256;

/// How long one write may take before the miner gives up on its answer.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Takes the steps open on one assignment, one after the other, until none is open or
/// one is not answered with success.
pub(super) async fn drive(ctx: Arc<Ctx>, d: Drive) -> DriveEnd {
    let mut going = Going::new(d);
    let outcome = loop {
        let Some((step, body)) = going.next(&ctx).await else {
            break Outcome::Idle;
        };
        ctx.stats.writes.fetch_add(1, Ordering::Relaxed);
        let answer = ctx
            .client
            .ok_typed::<_, Updated>(
                Method::POST,
                &format!("/v1/tasks/{}/{}", going.task, step.op()),
                Some(&body),
                Some(&ctx.token),
                Some(WRITE_TIMEOUT),
            )
            .await
            .map(|u| u.state);
        if let Some(end) = going.settle(&ctx, step, answer).await {
            break end;
        }
    };
    going.end(outcome)
}

/// A drive under way: what it knows of its assignment so far.
pub(super) struct Going {
    pub task: String,
    slot_ms: u64,
    view: View,
    payload: String,
    secret: Option<Secret>,
    wrote: bool,
}

impl Going {
    pub fn new(d: Drive) -> Self {
        Going {
            task: d.task,
            slot_ms: d.slot_ms,
            view: d.view,
            payload: d.payload,
            secret: d.secret,
            wrote: false,
        }
    }

    /// The step open now and its body, if any (a precommit's secret is chosen here
    /// once, a reveal is tampered with here when the miner is told to).
    pub async fn next(&mut self, ctx: &Ctx) -> Option<(Step, StepBody)> {
        let step = next_step(&self.view, self.secret.is_some())?;
        let body = match step {
            Step::Ack => StepBody::Ack {},
            Step::Precommit => {
                if self.secret.is_none() {
                    self.secret = Some(compute(ctx, &self.payload).await);
                }
                let (output, nonce) = self.secret.as_ref().expect("chosen above");
                StepBody::Precommit {
                    hash: hex::encode(sha256(&[output, nonce])),
                }
            }
            Step::Reveal => {
                let (mut output, nonce) = self.secret.clone().expect("a reveal needs the secret");
                let n = ctx.stats.attempted.fetch_add(1, Ordering::Relaxed) + 1;
                if ctx.spec.wrong_every > 0 && n % ctx.spec.wrong_every == 0 {
                    output.extend_from_slice(b"-tampered");
                }
                StepBody::Reveal {
                    output: b64(&output),
                    nonce: b64(&nonce),
                }
            }
        };
        Some((step, body))
    }

    /// Takes in the answer to `step` (the task's state after it, or the error):
    /// `None` while more steps may follow, else how the drive ends.
    pub async fn settle(
        &mut self,
        ctx: &Ctx,
        step: Step,
        answer: Result<String, super::ClientError>,
    ) -> Option<Outcome> {
        match answer {
            Ok(task_state) => {
                self.wrote = true;
                match step {
                    Step::Ack => {
                        ctx.stats.acks.fetch_add(1, Ordering::Relaxed);
                        self.view = View::new(Slot::Acked, &task_state);
                        // Infer while the other miners ack: the precommit is ready
                        // the moment the phase opens.
                        if self.secret.is_none() {
                            self.secret = Some(compute(ctx, &self.payload).await);
                        }
                        None
                    }
                    Step::Precommit => {
                        ctx.stats.precommits.fetch_add(1, Ordering::Relaxed);
                        self.view = View::new(Slot::Precommitted, &task_state);
                        None
                    }
                    Step::Reveal => {
                        ctx.stats.reveals.fetch_add(1, Ordering::Relaxed);
                        self.view = View::new(Slot::Committed, &task_state);
                        Some(Outcome::Finished)
                    }
                }
            }
            Err(e) if step == Step::Reveal && e.status() == Some(422) => {
                ctx.stats.rejected.fetch_add(1, Ordering::Relaxed);
                self.view = View::new(Slot::Over, &self.view.task_state);
                Some(Outcome::Finished)
            }
            Err(e) if is_gone(&e) => Some(Outcome::Gone(e.to_string())),
            Err(e) if e.is_transient() => {
                ctx.stats.errors.fetch_add(1, Ordering::Relaxed);
                Some(Outcome::Failed)
            }
            Err(_) => {
                ctx.stats.refused.fetch_add(1, Ordering::Relaxed);
                Some(Outcome::Refused)
            }
        }
    }

    /// The end of the drive, with what it learnt.
    pub fn end(self, outcome: Outcome) -> DriveEnd {
        DriveEnd {
            task: self.task,
            slot_ms: self.slot_ms,
            view: self.view,
            secret: self.secret,
            wrote: self.wrote,
            outcome,
        }
    }
}

/// The simulated inference: `work` long, then the output and a fresh nonce.
async fn compute(ctx: &Ctx, payload: &str) -> Secret {
    if !ctx.spec.work.is_zero() {
        tokio::time::sleep(ctx.spec.work).await;
    }
    let bytes = unb64(payload).unwrap_or_else(|| payload.as_bytes().to_vec());
    let mut nonce = vec![0u8; 16];
    rand::rng().fill_bytes(&mut nonce);
    (infer(&bytes), nonce)
}

/// One step of a steps call, as sent.
#[derive(Serialize)]
struct StepCall<'a> {
    task_id: &'a str,
    op: &'static str,
    #[serde(flatten)]
    body: &'a StepBody,
}

#[derive(Serialize)]
struct StepsCall<'a> {
    steps: Vec<StepCall<'a>>,
}

/// The answer to a steps call: one outcome per step, in order.
#[derive(Debug, Deserialize)]
struct StepsAnswer {
    results: Vec<StepAnswer>,
}

#[derive(Debug, Deserialize)]
struct StepAnswer {
    status: u16,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    error: Option<StepError>,
}

#[derive(Debug, Deserialize)]
struct StepError {
    code: String,
    message: String,
}

impl StepAnswer {
    /// As the single-step route would have answered it.
    fn into_result(self) -> Result<String, ClientError> {
        if self.status == 200 {
            return Ok(self.state.unwrap_or_default());
        }
        let (code, message) = self.error.map_or_else(
            || ("unknown".to_string(), String::new()),
            |e| (e.code, e.message),
        );
        Err(ClientError::Api {
            status: self.status,
            code,
            message,
        })
    }
}

/// Takes the steps open on many assignments, all of a round in one steps call,
/// round after round until no step is open on any: each drive ends as [`drive`]
/// would have ended it. A call that fails as a whole (no answer, 429, 5xx, a
/// refusal of the call) ends every drive that had a step in it the same way.
pub(super) async fn drive_many(ctx: Arc<Ctx>, drives: Vec<Drive>) -> Vec<DriveEnd> {
    let path = format!("/v1/miners/{}/steps", ctx.id);
    let mut going: Vec<(Going, Option<Outcome>)> =
        drives.into_iter().map(|d| (Going::new(d), None)).collect();
    loop {
        let mut round: Vec<(usize, Step, StepBody)> = Vec::new();
        for (i, (g, outcome)) in going.iter_mut().enumerate() {
            if outcome.is_some() {
                continue;
            }
            match g.next(&ctx).await {
                Some((step, body)) => round.push((i, step, body)),
                None => *outcome = Some(Outcome::Idle),
            }
        }
        if round.is_empty() {
            break;
        }
        let call = StepsCall {
            steps: round
                .iter()
                .map(|(i, step, body)| StepCall {
                    task_id: &going[*i].0.task,
                    op: step.op(),
                    body,
                })
                .collect(),
        };
        ctx.stats.writes.fetch_add(1, Ordering::Relaxed);
        let answer = ctx
            .client
            .ok_typed::<_, StepsAnswer>(
                Method::POST,
                &path,
                Some(&call),
                Some(&ctx.token),
                Some(WRITE_TIMEOUT),
            )
            .await;
        drop(call);
        let answers: Vec<Result<String, ClientError>> = match answer {
            Ok(a) if a.results.len() == round.len() => {
                a.results.into_iter().map(StepAnswer::into_result).collect()
            }
            Ok(a) => {
                let e = ClientError::Unexpected(format!(
                    "{} outcomes for {} steps",
                    a.results.len(),
                    round.len()
                ));
                round.iter().map(|_| Err(e.clone())).collect()
            }
            Err(e) => round.iter().map(|_| Err(e.clone())).collect(),
        };
        for ((i, step, _), answer) in round.into_iter().zip(answers) {
            let (g, outcome) = &mut going[i];
            if let Some(end) = g.settle(&ctx, step, answer).await {
                *outcome = Some(end);
            }
        }
    }
    going
        .into_iter()
        .map(|(g, outcome)| g.end(outcome.unwrap_or(Outcome::Idle)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_steps_call_is_the_single_step_bodies_with_a_task_and_an_op() {
        let ack = StepBody::Ack {};
        let pre = StepBody::Precommit { hash: "ab".into() };
        let rev = StepBody::Reveal {
            output: "o".into(),
            nonce: "n".into(),
        };
        let call = StepsCall {
            steps: vec![
                StepCall {
                    task_id: "t-1",
                    op: Step::Ack.op(),
                    body: &ack,
                },
                StepCall {
                    task_id: "t-2",
                    op: Step::Precommit.op(),
                    body: &pre,
                },
                StepCall {
                    task_id: "t-3",
                    op: Step::Reveal.op(),
                    body: &rev,
                },
            ],
        };
        assert_eq!(
            serde_json::to_string(&call).unwrap(),
            r#"{"steps":[{"task_id":"t-1","op":"ack"},{"task_id":"t-2","op":"precommit","hash":"ab"},{"task_id":"t-3","op":"commit","output":"o","nonce":"n"}]}"#
        );
    }

    #[test]
    fn a_steps_outcome_reads_as_the_single_step_answer() {
        let a: StepsAnswer = serde_json::from_str(
            r#"{"results":[{"task_id":"t-1","op":"ack","status":200,"state":"acked"},
                {"task_id":"t-2","op":"ack","status":409,"error":{"code":"conflict","message":"miner m-1 is gone"}},
                {"task_id":"t-3","op":"commit","status":422,"error":{"code":"reveal_mismatch","message":"no"}}]}"#,
        )
        .unwrap();
        let r: Vec<_> = a.results.into_iter().map(StepAnswer::into_result).collect();
        assert_eq!(r[0].as_deref().ok(), Some("acked"));
        let e = r[1].as_ref().unwrap_err();
        assert!(is_gone(e));
        assert_eq!(r[2].as_ref().unwrap_err().status(), Some(422));
    }
}
