//! Refused commands: each answers its kind of rejection and changes nothing; `check`
//! foresees each of them without a log entry.

use super::*;

#[test]
fn illegal_transitions_are_refused_and_change_nothing() {
    let mut w = World::new();
    let s = w.session(2, 2);
    let (a, b, c) = (w.miner(1), w.miner(1), w.miner(1));
    let t = w.submit(s, "x");
    assert_eq!(w.holders(t), vec![a, b]);
    let conflict = |r: Rejection| assert!(matches!(r, Rejection::Conflict(_)), "{r}");

    // Not assigned to c.
    conflict(w.refused(Command::Ack {
        task: t,
        auth: auth(c),
    }));
    // Precommit and reveal before ack.
    conflict(w.refused(Command::Precommit {
        task: t,
        auth: auth(a),
        hash: [0; 32],
    }));
    conflict(w.refused(World::reveal_cmd(t, a, "x")));
    w.ack(t, a);
    conflict(w.refused(Command::Ack {
        task: t,
        auth: auth(a),
    }));
    // The phase opens only when everyone acked.
    conflict(w.refused(Command::Precommit {
        task: t,
        auth: auth(a),
        hash: [0; 32],
    }));
    w.ack(t, b);
    w.precommit(t, a, "y");
    // A second precommit.
    conflict(w.refused(Command::Precommit {
        task: t,
        auth: auth(a),
        hash: [1; 32],
    }));
    // Reveal before the phase closed.
    conflict(w.refused(World::reveal_cmd(t, a, "y")));
    w.precommit(t, b, "y");
    w.reveal(t, a, "y");
    conflict(w.refused(World::reveal_cmd(t, a, "y")));
    w.reveal(t, b, "y");
    assert_eq!(w.state(t), TaskState::Completed);
    // Any write to a completed task.
    conflict(w.refused(World::reveal_cmd(t, b, "y")));
    conflict(w.refused(Command::Ack {
        task: t,
        auth: auth(a),
    }));
    conflict(w.refused(Command::CancelTask { task: t }));

    // Unknown ids, bad tokens, bad specs.
    assert!(matches!(
        w.refused(Command::CancelTask { task: TaskId(99) }),
        Rejection::NotFound(_)
    ));
    assert!(matches!(
        w.refused(Command::CloseSession {
            session: SessionId(99)
        }),
        Rejection::NotFound(_)
    ));
    let bad = MinerAuth {
        miner: a,
        token_hash: [7; 32],
    };
    assert!(matches!(
        w.refused(Command::Heartbeat { auth: bad }),
        Rejection::Unauthorized(_)
    ));
    let nobody = MinerAuth {
        miner: MinerId(99),
        token_hash: [7; 32],
    };
    assert!(matches!(
        w.refused(Command::Heartbeat { auth: nobody }),
        Rejection::Unauthorized(_)
    ));
    for bad_spec in [spec(0, 1), spec(8, 1), spec(3, 4), spec(2, 0)] {
        assert!(matches!(
            w.refused(Command::CreateSession(bad_spec)),
            Rejection::Invalid(_)
        ));
    }
    let mut few_nodes = spec(3, 2);
    few_nodes.max_nodes = 2;
    assert!(matches!(
        w.refused(Command::CreateSession(few_nodes)),
        Rejection::Invalid(_)
    ));
    assert!(matches!(
        w.refused(Command::SubmitTasks {
            session: s,
            tasks: vec![]
        }),
        Rejection::Invalid(_)
    ));
    assert!(matches!(
        w.refused(Command::RegisterMiner {
            name: String::new(),
            capacity: 1,
            tags: vec![],
            token_hash: [0; 32],
            heartbeat_timeout_ms: 1
        }),
        Rejection::Invalid(_)
    ));
    // A closed session takes no tasks; closing twice is refused.
    w.ok(Command::CloseSession { session: s });
    conflict(w.refused(Command::SubmitTasks {
        session: s,
        tasks: vec![new_task("", None, None)],
    }));
    conflict(w.refused(Command::CloseSession { session: s }));
    // A gone miner can do nothing.
    w.ok(Command::DeregisterMiner { auth: auth(c) });
    conflict(w.refused(Command::Heartbeat { auth: auth(c) }));
}

/// Asserts that `check` refuses the command with the rejection apply then gives, of
/// the expected kind, and that nothing changed.
fn foreseen(w: &mut World, c: Command, code: &str) {
    let checked =
        w.s.check(&c)
            .expect_err(&format!("check must refuse {c:?}"));
    assert_eq!(checked.code(), code, "{c:?}: {checked}");
    assert_eq!(w.refused(c), checked);
}

#[test]
fn check_foresees_every_refusal_of_each_command() {
    let mut w = World::new();
    let s = w.session(2, 2);
    let (a, b, c) = (w.miner(1), w.miner(1), w.miner(1));
    let t = w.submit_with(s, "x", None, Some("k"));
    assert_eq!(w.holders(t), vec![a, b]);
    let ack = |task, m| Command::Ack {
        task,
        auth: auth(m),
    };
    let precommit = |task, m| Command::Precommit {
        task,
        auth: auth(m),
        hash: sha256(&[b"out", &nonce(m)]),
    };
    let forged = MinerAuth {
        miner: a,
        token_hash: [9; 32],
    };
    let nobody = MinerAuth {
        miner: MinerId(77),
        token_hash: token(MinerId(77)),
    };

    // Miner steps: credentials, then the task, then the slot, then the phase.
    for cmd in [
        Command::Ack {
            task: t,
            auth: forged,
        },
        Command::Ack {
            task: t,
            auth: nobody,
        },
        Command::Heartbeat { auth: forged },
        Command::DrainMiner { auth: nobody },
        Command::DeregisterMiner { auth: forged },
    ] {
        foreseen(&mut w, cmd, "unauthorized");
    }
    foreseen(&mut w, ack(TaskId(999), a), "not_found");
    foreseen(&mut w, ack(t, c), "conflict"); // not c's task
    foreseen(&mut w, precommit(t, a), "conflict"); // not acked yet
    foreseen(&mut w, World::reveal_cmd(t, a, "out"), "conflict"); // not precommitted
    w.ack(t, a);
    foreseen(&mut w, ack(t, a), "conflict"); // acked twice
    foreseen(&mut w, precommit(t, a), "conflict"); // the phase has not opened
    w.ack(t, b);
    w.precommit(t, a, "out");
    foreseen(&mut w, precommit(t, a), "conflict"); // precommitted twice
    foreseen(&mut w, World::reveal_cmd(t, a, "out"), "conflict"); // phase still open
    let huge = Command::Reveal {
        task: t,
        auth: auth(a),
        output: vec![],
        nonce: vec![0; limits::MAX_LABEL_BYTES + 1],
    };
    foreseen(&mut w, huge, "too_large");
    w.precommit(t, b, "out");
    // A reveal that does not match its precommit is not refused: apply records it.
    let wrong = World::reveal_cmd(t, b, "not out");
    assert_eq!(w.s.check(&wrong), Ok(()));
    assert!(matches!(w.ok(wrong), Response::RevealRejected { .. }));
    foreseen(&mut w, World::reveal_cmd(t, b, "out"), "conflict"); // rejected slot
    w.reveal(t, a, "out");
    foreseen(&mut w, World::reveal_cmd(t, a, "out"), "conflict"); // revealed twice
                                                                  // c took b's slot; its slot expires and goes to d (which never held the task):
                                                                  // c may not act on its expired slot.
    assert_eq!(w.holders(t), vec![c]);
    let d = w.miner(1);
    w.advance(ACK_MS);
    assert_eq!(w.holders(t), vec![d]);
    assert_eq!(w.slot(t, c), SlotState::Expired);
    assert_eq!(w.state(t), TaskState::Committed);
    foreseen(&mut w, ack(t, c), "conflict");

    // Users: cancel, close, submit.
    foreseen(
        &mut w,
        Command::CancelTask { task: TaskId(999) },
        "not_found",
    );
    let done = w.submit(s, "y");
    w.ok(Command::CancelTask { task: done });
    foreseen(&mut w, Command::CancelTask { task: done }, "conflict");
    foreseen(&mut w, ack(done, a), "conflict"); // finished task
    let submit = |session, tasks| Command::SubmitTasks { session, tasks };
    foreseen(
        &mut w,
        submit(SessionId(99), vec![new_task("x", None, None)]),
        "not_found",
    );
    foreseen(&mut w, submit(s, vec![]), "invalid");
    foreseen(
        &mut w,
        submit(s, vec![new_task("x", None, Some(""))]),
        "invalid",
    );
    foreseen(
        &mut w,
        submit(s, vec![new_task("other", None, Some("k"))]),
        "idempotency_conflict",
    );
    foreseen(
        &mut w,
        Command::CloseSession {
            session: SessionId(99),
        },
        "not_found",
    );
    let mut bad = spec(2, 3);
    foreseen(&mut w, Command::CreateSession(bad.clone()), "invalid");
    bad.quorum = 2;
    bad.idempotency_window_ms = 0;
    foreseen(&mut w, Command::CreateSession(bad), "invalid");
    foreseen(
        &mut w,
        Command::RegisterMiner {
            name: "dup".into(),
            capacity: 1,
            tags: vec![],
            token_hash: token(a),
            heartbeat_timeout_ms: 1_000,
        },
        "conflict",
    );
    w.ok(Command::CloseSession { session: s });
    foreseen(&mut w, Command::CloseSession { session: s }, "conflict");
    foreseen(
        &mut w,
        submit(s, vec![new_task("x", None, None)]),
        "conflict",
    );
    // A gone miner.
    w.ok(Command::DeregisterMiner { auth: auth(c) });
    foreseen(&mut w, Command::Heartbeat { auth: auth(c) }, "conflict");
    // Ticks are never refused.
    assert_eq!(w.s.check(&Command::Tick), Ok(()));
}
