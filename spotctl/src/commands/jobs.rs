//! Jobs: schedule, list, show, edit, enable, disable, delete, and their next fire times.

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;

use chrono_tz::Tz;
use reqwest::Method;
use serde_json::{json, Value};

use crate::cli::{Output, ScheduleArgs};
use crate::client::{segment, ApiClient, Body, CtlError, CtlResult};
use crate::output::{self, text, when};

pub async fn schedule(api: &ApiClient, output: Output, args: ScheduleArgs) -> CtlResult<()> {
    let answer = match &args.file {
        Some(path) => {
            let job = read_job_file(path)?;
            api.json(Method::POST, "/v1/jobs", Some(Body::Json(job)))
                .await?
        }
        None => {
            let mut body = json!({
                "docker_image": args.image.clone(),
                "schedule": args.at.clone(),
                "env": args.env.clone(),
            });
            if let Some(cmd) = &args.cmd {
                body["cmd"] = json!(cmd);
            }
            if !args.instance_types.is_empty() {
                body["instance_types"] = json!(args.instance_types.clone());
            }
            if let Some(timeout) = args.timeout {
                body["timeout_secs"] = json!(timeout);
            }
            api.json(Method::POST, "/schedule", Some(Body::Json(body)))
                .await?
        }
    };
    let next = match &answer["next_fire_at"] {
        Value::Null => json!(args.at),
        next => next.clone(),
    };
    let row = vec![text(&answer["id"]), when(&next)];
    output::print(output, &answer, &["ID", "NEXT FIRE"], vec![row]);
    Ok(())
}

/// A job file: JSON, or TOML when its name ends in `.toml`.
fn read_job_file(path: &Path) -> CtlResult<Value> {
    let text = std::fs::read_to_string(path)
        .map_err(|err| CtlError::Usage(format!("{}: {err}", path.display())))?;
    let parsed = if path.extension().is_some_and(|ext| ext == "toml") {
        toml::from_str::<Value>(&text).map_err(|err| err.to_string())
    } else {
        serde_json::from_str::<Value>(&text).map_err(|err| err.to_string())
    };
    parsed.map_err(|err| CtlError::Usage(format!("{}: {err}", path.display())))
}

pub async fn list(
    api: &ApiClient,
    output: Output,
    group: Option<&str>,
    limit: usize,
) -> CtlResult<()> {
    let mut path = format!("/v1/jobs?limit={limit}");
    if let Some(group) = group {
        path.push_str(&format!("&group={}", segment(group)));
    }
    let answer = api.get(&path).await?;
    let rows = output::items(&answer, "jobs").iter().map(job_row).collect();
    output::print(output, &answer, JOB_HEADER, rows);
    Ok(())
}

const JOB_HEADER: &[&str] = &[
    "ID",
    "NAME",
    "GROUP",
    "SCHEDULE",
    "TIME ZONE",
    "STATE",
    "NEXT FIRE",
];

fn job_row(job: &Value) -> Vec<String> {
    vec![
        text(&job["id"]),
        text(&job["name"]),
        text(&job["group"]),
        text(&job["schedule"]),
        text(&job["timezone"]),
        state_cell(job),
        when(&job["next_fire_at"]),
    ]
}

/// Enabled, disabled, or paused with its note.
fn state_cell(job: &Value) -> String {
    match job["paused"]["note"].as_str() {
        Some("") => "paused".into(),
        Some(note) => format!("paused: {note}"),
        None if job["enabled"].as_bool() == Some(true) => "enabled".into(),
        None => "disabled".into(),
    }
}

pub async fn get(api: &ApiClient, output: Output, job: &str) -> CtlResult<()> {
    let answer = api.get(&format!("/v1/jobs/{}", segment(job))).await?;
    show_job(output, &answer);
    Ok(())
}

/// One job: its row, then its runner, as the api holds it.
fn show_job(output: Output, job: &Value) {
    if output == Output::Json {
        return output::print(output, job, &[], Vec::new());
    }
    println!("{}", output::table(JOB_HEADER, vec![job_row(job)]));
    println!(
        "runner: {}",
        serde_json::to_string_pretty(&job["runner"]).unwrap_or_default()
    );
    if let Some(line) = jitter_line(&job["policies"]["jitter_secs"]) {
        println!("{line}");
    }
    if let Some(line) = remaining_line(job) {
        println!("{line}");
    }
}

/// How many fires a finite schedule has left and what then, unless it has no `max_runs`.
fn remaining_line(job: &Value) -> Option<String> {
    let max = job["policies"]["max_runs"].as_u64()?;
    let left = job["remaining_runs"].as_u64().unwrap_or(max);
    let then = match job["policies"]["on_last_run"].as_str() {
        Some("delete") => "; then the job deletes itself",
        Some("disable") => "; then the job disables itself",
        _ => "",
    };
    Some(format!("runs left: {left} of {max} scheduled fires{then}"))
}

/// What a job's jitter means, unless it has none.
fn jitter_line(jitter_secs: &Value) -> Option<String> {
    let secs = jitter_secs.as_u64().filter(|secs| *secs > 0)?;
    Some(format!(
        "jitter: each fire starts up to {secs} s after its instant"
    ))
}

pub async fn edit(
    api: &ApiClient,
    output: Output,
    job: &str,
    file: Option<&Path>,
) -> CtlResult<()> {
    let path = format!("/v1/jobs/{}", segment(job));
    let body = match file {
        Some(file) => read_job_file(file)?,
        None => {
            let current = editable(&api.get(&path).await?);
            match edit_in_editor(job, &current)? {
                Some(edited) => edited,
                None => {
                    eprintln!("{job} unchanged");
                    return Ok(());
                }
            }
        }
    };
    let answer = api.json(Method::PUT, &path, Some(Body::Json(body))).await?;
    show_job(output, &answer);
    Ok(())
}

/// The fields of a job that `/v1/jobs` takes back, from the job as the api shows it.
fn editable(job: &Value) -> Value {
    const FIELDS: [&str; 9] = [
        "name",
        "description",
        "tags",
        "group",
        "schedule",
        "timezone",
        "runner",
        "enabled",
        "policies",
    ];
    let fields = FIELDS
        .iter()
        .filter_map(|&field| Some((field.to_string(), job.get(field)?.clone())));
    Value::Object(fields.collect())
}

/// Opens the job in the user's editor; the edited job, or `None` if it was left as it was.
fn edit_in_editor(job: &str, current: &Value) -> CtlResult<Option<Value>> {
    let editor = std::env::var("VISUAL")
        .or_else(|_| std::env::var("EDITOR"))
        .unwrap_or_else(|_| "vi".into());
    let file = std::env::temp_dir().join(format!("spotctl-edit-{}.json", segment(job)));
    let text = serde_json::to_string_pretty(current).unwrap_or_default() + "\n";
    std::fs::write(&file, &text)
        .map_err(|err| CtlError::Other(format!("{}: {err}", file.display())))?;
    // Through the shell, so that EDITOR may carry arguments ("code --wait").
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("spotctl")
        .arg(&file)
        .status()
        .map_err(|err| CtlError::Other(format!("starting {editor}: {err}")))?;
    if !status.success() {
        return Err(CtlError::Other(format!("{editor} exited with {status}")));
    }
    let edited = read_job_file(&file)?;
    let _ = std::fs::remove_file(&file);
    Ok((edited != *current).then_some(edited))
}

pub async fn set_enabled(
    api: &ApiClient,
    output: Output,
    job: &str,
    enabled: bool,
) -> CtlResult<()> {
    let verb = if enabled { "enable" } else { "disable" };
    let path = format!("/v1/jobs/{}/{verb}", segment(job));
    let answer = api.json(Method::POST, &path, None).await?;
    show_job(output, &answer);
    Ok(())
}

pub async fn pause(api: &ApiClient, output: Output, job: &str, note: &str) -> CtlResult<()> {
    let path = format!("/v1/jobs/{}/pause", segment(job));
    let body = Body::Json(json!({ "note": note }));
    let answer = api.json(Method::POST, &path, Some(body)).await?;
    show_job(output, &answer);
    Ok(())
}

pub async fn resume(api: &ApiClient, output: Output, job: &str) -> CtlResult<()> {
    let path = format!("/v1/jobs/{}/resume", segment(job));
    let answer = api.json(Method::POST, &path, None).await?;
    show_job(output, &answer);
    Ok(())
}

pub async fn delete(api: &ApiClient, job: &str, yes: bool) -> CtlResult<()> {
    if !yes && !confirmed(&format!("delete job {job} and all its runs?"))? {
        return Err(CtlError::Usage("not deleted".into()));
    }
    api.json(Method::DELETE, &format!("/v1/jobs/{}", segment(job)), None)
        .await?;
    eprintln!("deleted {job}");
    Ok(())
}

/// Asks on the terminal; without one (a script), only `--yes` confirms.
fn confirmed(question: &str) -> CtlResult<bool> {
    if !std::io::stdin().is_terminal() {
        return Err(CtlError::Usage(format!(
            "{question} Not asked without a terminal: pass --yes"
        )));
    }
    eprint!("{question} [y/N] ");
    std::io::stderr().flush().ok();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|err| CtlError::Other(err.to_string()))?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

pub async fn next(api: &ApiClient, output: Output, job: &str, count: usize) -> CtlResult<()> {
    let path = format!("/v1/jobs/{}/next?count={count}", segment(job));
    let answer = api.get(&path).await?;
    let zone: Option<Tz> = answer["timezone"].as_str().and_then(|tz| tz.parse().ok());
    let rows = output::items(&answer, "next")
        .iter()
        .enumerate()
        .map(|(i, at)| {
            let local = match (output::instant(at), zone) {
                (Some(at), Some(zone)) => at
                    .with_timezone(&zone)
                    .format("%Y-%m-%d %H:%M:%S %Z")
                    .to_string(),
                _ => "-".into(),
            };
            vec![(i + 1).to_string(), local, when(at)]
        })
        .collect();
    let zone_header = format!("IN {}", text(&answer["timezone"]));
    output::print(output, &answer, &["#", &zone_header, "UTC"], rows);
    if output != Output::Json {
        if let Some(line) = jitter_line(&answer["jitter_secs"]) {
            println!("{line} (the times above include it)");
        }
        let skipped = output::items(&answer, "skipped");
        if !skipped.is_empty() {
            let skipped: Vec<String> = skipped.iter().map(when).collect();
            println!("skipped by an exclusion: {}", skipped.join(", "));
        }
    }
    Ok(())
}
