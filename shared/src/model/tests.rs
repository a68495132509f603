//! The model's state machines, validation and schedule windows.

use chrono::Utc;

use super::*;

#[test]
fn runs_only_move_forward() {
    use RunState::*;
    let path = [Pending, Provisioning, Booting, Running, Succeeded];
    for pair in path.windows(2) {
        assert!(pair[0].can_move_to(pair[1]), "{} -> {}", pair[0], pair[1]);
        assert!(!pair[1].can_move_to(pair[0]), "{} -> {}", pair[1], pair[0]);
    }
    assert!(Pending.can_move_to(Running), "light runners start at once");
    assert!(!Pending.can_move_to(Booting));
    assert!(!Pending.can_move_to(Succeeded));
    assert!(Booting.can_move_to(Failed));
    assert!(Provisioning.can_move_to(ProvisionFailed));
    assert!(
        Pending.can_move_to(Failed) && Provisioning.can_move_to(Failed),
        "a run lost before its launch fails"
    );
}

#[test]
fn terminal_states_are_final() {
    for from in RunState::ALL.into_iter().filter(|s| s.is_terminal()) {
        for to in RunState::ALL {
            assert!(!from.can_move_to(to), "{from} -> {to} must be illegal");
            assert!(from.check_move(to).is_err());
        }
    }
}

#[test]
fn states_round_trip_through_their_names() {
    for state in RunState::ALL {
        assert_eq!(state.as_str().parse::<RunState>().unwrap(), state);
        let json = serde_json::to_string(&state).unwrap();
        assert_eq!(json, format!("\"{}\"", state.as_str()));
    }
    for state in InstanceState::ALL {
        assert_eq!(state.as_str().parse::<InstanceState>().unwrap(), state);
    }
}

fn spec(cmd: Option<&str>, env: &[&str]) -> ContainerSpec {
    ContainerSpec {
        image: "busybox:latest".into(),
        cmd: cmd.map(str::to_string),
        env: env.iter().map(|s| s.to_string()).collect(),
        instance_types: vec![],
        ..ContainerSpec::default()
    }
}

#[test]
fn container_specs_are_validated_field_by_field() {
    assert!(
        spec(Some("sleep 60"), &["key=value", "key1=value=1", "EMPTY="])
            .validate("")
            .is_ok()
    );
    let err = spec(None, &["ok=1", "novalue"]).validate("").unwrap_err();
    assert_eq!(err.field.as_deref(), Some("env[1]"));
    let err = spec(None, &["=value"]).validate("").unwrap_err();
    assert_eq!(err.field.as_deref(), Some("env[0]"));
    let err = spec(Some("echo 'unterminated"), &[])
        .validate("")
        .unwrap_err();
    assert_eq!(err.field.as_deref(), Some("cmd"));
    // An empty command is the image's default, as `argv` reads it.
    assert!(spec(Some(""), &[]).validate("").is_ok());
    assert!(spec(Some("  "), &[]).validate("").is_ok());
    let mut empty_image = spec(None, &[]);
    empty_image.image = "  ".into();
    assert_eq!(
        empty_image.validate("").unwrap_err().field.as_deref(),
        Some("docker_image")
    );
}

#[test]
fn commands_split_like_a_shell_without_one() {
    let argv = spec(Some(r#"sh -c 'echo "$HOME"; exit 3'"#), &[])
        .argv()
        .unwrap();
    assert_eq!(argv, vec!["sh", "-c", r#"echo "$HOME"; exit 3"#]);
    assert_eq!(spec(Some("   "), &[]).argv(), None);
    assert_eq!(spec(None, &[]).argv(), None);
}

#[test]
fn backoff_doubles_up_to_its_cap() {
    let retry = RetryPolicy {
        max_attempts: 5,
        backoff_secs: 10,
        backoff_max_secs: 60,
        ..RetryPolicy::default()
    };
    let ceilings: Vec<u64> = (2..=6)
        .map(|n| retry.backoff_ceiling(n).as_secs())
        .collect();
    assert_eq!(ceilings, vec![10, 20, 40, 60, 60]);
}

#[test]
fn windows_bound_the_fires() {
    use chrono::TimeZone;
    let at = |h: u32| Utc.with_ymd_and_hms(2026, 5, 1, h, 0, 0).unwrap();
    let job = Job {
        id: "j".into(),
        account: "a".into(),
        group: "g".into(),
        name: String::new(),
        description: String::new(),
        modified_by: String::new(),
        tags: vec![],
        schedule: "@hourly".into(),
        timezone: "UTC".into(),
        runner: Runner::Container(spec(None, &[])),
        enabled: true,
        generation: 1,
        paused: None,
        policies: Policies {
            start_at: Some(at(5)),
            end_at: Some(at(7)),
            ..Policies::default()
        },
        created_at: at(0),
        updated_at: at(0),
        next_fire_at: None,
    };
    assert_eq!(job.first_fire(at(1)).unwrap(), Some(at(5)));
    assert_eq!(job.upcoming(at(0), 10).unwrap(), vec![at(5), at(6), at(7)]);
    assert_eq!(job.next_fire_after(at(7)).unwrap(), None);
}

#[test]
fn simple_status_words_follow_seed_003() {
    assert_eq!(RunState::Pending.simple_status(), "scheduled");
    assert_eq!(RunState::Running.simple_status(), "running");
    assert_eq!(RunState::Succeeded.simple_status(), "finished");
    assert_eq!(RunState::Failed.simple_status(), "failed");
    assert_eq!(RunState::ProvisionFailed.simple_status(), "failed");
}

#[test]
fn instances_never_come_back_from_terminated() {
    use InstanceState::*;
    assert!(Requested.can_move_to(Running));
    assert!(Running.can_move_to(Terminating));
    assert!(Terminating.can_move_to(Terminated));
    for to in InstanceState::ALL {
        assert!(!Terminated.can_move_to(to));
    }
    assert!(!Terminating.can_move_to(Running));
}
