//! The journal's unit tests: state round trips and corruption, the history
//! read whole and from the end, rotation, torn lines.

use super::*;

fn entry(outcome: Outcome) -> HistoryEntry {
    HistoryEntry {
        at: OffsetDateTime::now_utc(),
        kind: Kind::Update,
        from: Some("sha256:a".into()),
        to: Some("sha256:b".into()),
        outcome,
        trigger: Trigger::Poll,
        error: None,
        downtime_ms: Some(12),
        reason: None,
        user: None,
        marked_bad: None,
        gpu_hold: None,
        changed: Vec::new(),
        spec: None,
    }
}

#[test]
fn state_round_trips_and_survives_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path()).unwrap();
    assert_eq!(j.load().unwrap(), (State::default(), false));
    let mut s = State::default();
    s.commit("sha256:a");
    s.commit("sha256:b");
    s.mark_bad("sha256:c", "crashed", OffsetDateTime::now_utc());
    j.save(&s).unwrap();
    let (back, recovered) = j.load().unwrap();
    assert!(!recovered);
    assert_eq!(back.last_good_digest.as_deref(), Some("sha256:b"));
    assert_eq!(back.previous_good, vec!["sha256:a".to_string()]);
    assert!(back.is_bad("sha256:c"));

    std::fs::write(j.state_path(), b"{\"current_digest\": \"sha").unwrap();
    let (fresh, recovered) = j.load().unwrap();
    assert!(recovered);
    assert_eq!(fresh, State::default());
    let kept: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("state.json.corrupt-")
        })
        .collect();
    assert_eq!(kept.len(), 1, "the corrupt file is kept aside");
}

#[test]
fn a_lost_state_is_rebuilt_from_the_history() {
    let mut h = vec![entry(Outcome::Success), entry(Outcome::RolledBack)];
    h[0].to = Some("sha256:a".into());
    h[1].to = Some("sha256:b".into());
    h.push(HistoryEntry {
        to: Some("sha256:c".into()),
        ..entry(Outcome::Success)
    });
    h.push(HistoryEntry {
        to: Some("sha256:d".into()),
        ..entry(Outcome::Failed)
    });
    let mut s = State::default();
    s.rebuild_from(&h);
    assert_eq!(s.last_good_digest.as_deref(), Some("sha256:c"));
    assert_eq!(s.previous_good, vec!["sha256:a".to_string()]);
    assert!(s.is_bad("sha256:b") && !s.is_bad("sha256:d"));
    assert_eq!(s.current_digest, None);
}

#[test]
fn a_rebuild_keeps_operator_rollbacks_drains_and_pins() {
    let e = |kind, from: Option<&str>, to: Option<&str>| HistoryEntry {
        kind,
        from: from.map(str::to_string),
        to: to.map(str::to_string),
        ..entry(Outcome::Success)
    };
    let mut h = vec![
        e(Kind::Update, None, Some("sha256:a")),
        e(Kind::Update, Some("sha256:a"), Some("sha256:b")),
        e(Kind::Rollback, Some("sha256:b"), Some("sha256:a")),
        e(Kind::Pin, Some("sha256:a"), Some("sha256:c")),
        e(Kind::Drain, Some("sha256:c"), None),
    ];
    h[4].reason = Some("bios".into());
    let mut s = State::default();
    s.rebuild_from(&h);
    assert_eq!(s.last_good_digest.as_deref(), Some("sha256:c"));
    assert!(
        s.is_bad("sha256:b"),
        "the digest rolled back from stays bad"
    );
    assert!(!s.previous_good.contains(&"sha256:b".to_string()));
    assert_eq!(s.pinned_digest.as_deref(), Some("sha256:c"));
    assert!(s.drained && s.drain_complete);
    assert_eq!(s.drain_reason.as_deref(), Some("bios"));

    h.push(e(Kind::Undrain, Some("sha256:c"), None));
    h.push(e(Kind::Unpin, Some("sha256:c"), None));
    let mut s = State::default();
    s.rebuild_from(&h);
    assert!(!s.drained && s.pinned.is_none() && s.pinned_digest.is_none());
}

#[test]
fn a_rebuild_keeps_held_worker_settings_and_not_their_digest_bad() {
    let config = |outcome, spec: &str| HistoryEntry {
        from: Some("sha256:a".into()),
        to: Some("sha256:a".into()),
        trigger: Trigger::Config,
        changed: vec!["worker.env.MODEL".into()],
        spec: Some(spec.into()),
        marked_bad: (outcome != Outcome::Success).then_some(false),
        error: Some("exited with code 2".into()),
        ..entry(outcome)
    };
    let mut h = vec![
        HistoryEntry {
            from: None,
            to: Some("sha256:a".into()),
            ..entry(Outcome::Success)
        },
        config(Outcome::RolledBack, "sha256:s1"),
    ];
    let mut s = State::default();
    s.rebuild_from(&h);
    let held = s.config_held.clone().expect("held");
    assert_eq!(
        (held.spec.as_str(), held.changed),
        ("sha256:s1", vec!["worker.env.MODEL".to_string()])
    );
    assert!(!s.is_bad("sha256:a"));
    assert_eq!(s.last_good_digest.as_deref(), Some("sha256:a"));
    h.push(config(Outcome::Success, "sha256:s2"));
    let mut s = State::default();
    s.rebuild_from(&h);
    assert_eq!(s.config_held, None);
}

#[test]
fn a_pending_update_written_before_the_spec_fields_still_loads() {
    let old = r#"{"from":"sha256:a","to":"sha256:b","trigger":"poll","step":"draining","started_at":"2026-01-01T00:00:00Z"}"#;
    let p: Pending = serde_json::from_str(old).unwrap();
    assert!(!p.settings_only());
    assert_eq!((p.to_spec, p.from_spec, p.changed), (None, None, vec![]));
}

#[test]
fn commit_clears_a_bad_mark_and_keeps_earlier_good() {
    let mut s = State::default();
    s.mark_bad("sha256:b", "x", OffsetDateTime::now_utc());
    s.commit("sha256:a");
    s.commit("sha256:b");
    assert!(!s.is_bad("sha256:b"));
    assert_eq!(s.previous_good, vec!["sha256:a".to_string()]);
    for i in 0..30 {
        s.mark_bad(&format!("sha256:{i}"), "x", OffsetDateTime::now_utc());
    }
    assert_eq!(s.bad_digests.len(), KEEP);
    assert!(s.is_bad("sha256:29") && !s.is_bad("sha256:0"));
}

#[test]
fn history_appends_and_skips_a_torn_line() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path()).unwrap();
    j.append(&entry(Outcome::Success)).unwrap();
    // A crash mid-append leaves half a line.
    let mut f = OpenOptions::new()
        .append(true)
        .open(j.history_path())
        .unwrap();
    f.write_all(b"{\"at\":\"2026-").unwrap();
    j.append(&entry(Outcome::RolledBack)).unwrap();
    let h = j.history().unwrap();
    assert_eq!(h.len(), 2);
    assert_eq!(h[0].outcome, Outcome::Success);
    assert_eq!(h[1].outcome, Outcome::RolledBack);
    let line = std::fs::read_to_string(j.history_path()).unwrap();
    let first: serde_json::Value = serde_json::from_str(line.lines().next().unwrap()).unwrap();
    for k in [
        "at",
        "kind",
        "from",
        "to",
        "outcome",
        "trigger",
        "error",
        "downtime_ms",
    ] {
        assert!(first.get(k).is_some(), "history line lacks {k}: {first}");
    }
}

#[test]
fn a_line_cut_inside_a_utf8_character_or_garbage_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path()).unwrap();
    let mut first = entry(Outcome::Success);
    first.error = Some("température élevée".into());
    j.append(&first).unwrap();
    // The same line cut inside "é" (two bytes), then garbage bytes.
    let full = serde_json::to_vec(&first).unwrap();
    let cut = full.iter().position(|b| *b == 0xC3).unwrap() + 1;
    let mut f = OpenOptions::new()
        .append(true)
        .open(j.history_path())
        .unwrap();
    f.write_all(&full[..cut]).unwrap();
    f.write_all(b"\n\xff\xfe{not json\n\n").unwrap();
    j.append(&entry(Outcome::RolledBack)).unwrap();
    let h = j.history().unwrap();
    assert_eq!(h.len(), 2, "{h:?}");
    assert_eq!(h[0].error.as_deref(), Some("température élevée"));
    assert_eq!(j.history_tail(5).unwrap(), h);
    assert_eq!(j.history_tail(1).unwrap(), h[1..].to_vec());
    // Cut at the very end, inside the character, with no newline after it.
    f.write_all(&full[..cut]).unwrap();
    assert_eq!(j.history().unwrap(), h);
    assert_eq!(j.history_tail(2).unwrap(), h);
}

#[test]
fn history_rotates_by_size_and_the_tail_reads_across_both_parts() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path()).unwrap();
    let line = serde_json::to_vec(&entry(Outcome::Success)).unwrap().len() as u64 + 1;
    // Ten lines a part.
    j.set_history_max(10 * line);
    let mut all = Vec::new();
    for i in 0..25u64 {
        let mut e = entry(Outcome::Success);
        e.downtime_ms = Some(i);
        j.append(&e).unwrap();
        all.push(e);
    }
    let size = |p: PathBuf| std::fs::metadata(p).unwrap().len();
    assert!(size(j.history_path()) <= 10 * line);
    assert!(size(j.history_old_path()) <= 10 * line);
    // What is on disk: the last 15 or so; the oldest went with the second rotation.
    let h = j.history().unwrap();
    assert_eq!(h, all[all.len() - h.len()..].to_vec());
    assert!(h.len() >= 11, "the older part is kept beside: {}", h.len());
    for n in [1, 3, 5, 10, 12, h.len(), 100] {
        let tail = j.history_tail(n).unwrap();
        assert_eq!(tail, h[h.len().saturating_sub(n)..].to_vec(), "n = {n}");
    }
}

#[test]
fn the_tail_reads_lines_longer_than_its_block() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path()).unwrap();
    let mut long = entry(Outcome::RolledBack);
    long.error = Some("é".repeat(TAIL_CHUNK as usize));
    for _ in 0..3 {
        j.append(&entry(Outcome::Success)).unwrap();
        j.append(&long).unwrap();
    }
    let h = j.history().unwrap();
    assert_eq!(h.len(), 6);
    for n in 1..=7 {
        assert_eq!(
            j.history_tail(n).unwrap(),
            h[h.len().saturating_sub(n)..].to_vec()
        );
    }
}
