//! The command line's shape: global options and one subcommand per verb.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

const EXIT_CODES: &str = "\
Exit codes: 0 done; 1 the api or the network failed, or a thing was not found; 2 bad usage or input
the api refused (the field and message are shown); 3 the key was refused. `run --wait` exits with the
container's exit code (1 if the run ended without one).";

/// Schedule and inspect spot-scheduler jobs, runs and instances.
#[derive(Debug, Parser)]
#[command(name = "spotctl", version, after_help = EXIT_CODES)]
pub struct Cli {
    /// The api's base URL [default: from the config file, else http://127.0.0.1:8080]
    #[arg(long, env = "SPOT_API_URL", global = true)]
    pub api_url: Option<String>,
    /// The key sent as X-Auth-Token [default: from the config file]
    #[arg(long, env = "SPOT_API_KEY", global = true, hide_env_values = true)]
    pub api_key: Option<String>,
    /// A TOML file with `api_url` and `api_key` [default: ~/.config/spotctl/config.toml]
    #[arg(long, env = "SPOTCTL_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// How to print what the api answers.
    #[arg(long, short, value_enum, default_value_t = Output::Table, global = true)]
    pub output: Output,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Schedule a container once (the simple API's fields), or any job from a JSON or TOML file.
    Schedule(ScheduleArgs),
    /// The account's jobs, newest first.
    Jobs {
        #[arg(long)]
        group: Option<String>,
        /// At most this many (1 to 1000).
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// One job, in full.
    Get { job: String },
    /// Replace a job's specification: from a JSON or TOML file (the fields of `schedule --file`), or
    /// by editing its current one in $VISUAL or $EDITOR.
    Edit {
        job: String,
        #[arg(long, short)]
        file: Option<PathBuf>,
    },
    /// Enable a job and arm its next fire.
    Enable { job: String },
    /// Disable a job; its armed timers are dropped.
    Disable { job: String },
    /// Pause a job with a note saying why: it fires nothing until resumed, and listings show the note.
    Pause {
        job: String,
        /// Why (shown wherever the job is listed).
        #[arg(long, short, default_value = "")]
        note: String,
    },
    /// Resume a paused job: its note is cleared and its next fire armed from now.
    Resume { job: String },
    /// Run a job for each instant of its schedule in a past range, some at a time.
    Backfill {
        job: String,
        /// The range's first instant (RFC 3339), included.
        #[arg(long)]
        from: String,
        /// The range's last instant (RFC 3339), included; not in the future.
        #[arg(long)]
        to: String,
        /// At most this many of its runs under way at once.
        #[arg(long, default_value_t = 1)]
        concurrency: u32,
    },
    /// A job's backfills with their progress; `--cancel ID` cancels one as a whole.
    Backfills {
        job: String,
        #[arg(long, value_name = "BACKFILL")]
        cancel: Option<String>,
    },
    /// Delete a job with its runs.
    Delete {
        job: String,
        /// Do not ask for confirmation.
        #[arg(long, short)]
        yes: bool,
    },
    /// The job's next fire times, in its time zone and in UTC.
    Next {
        job: String,
        #[arg(long, short = 'n', default_value_t = 10)]
        count: usize,
    },
    /// A job's runs, newest first.
    Runs {
        job: String,
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Each attempt to tell a webhook of a run's events (`policies.notify`): event, target host,
    /// outcome, HTTP status.
    Notifications { run: String },
    /// The copies of an array fire's run (`runner.array_size`), in index order: each index's
    /// latest attempt, its state, exit code and instance.
    Children { run: String },
    /// The instances a job's latest runs ran on: provider, type, spot or on-demand, lifetime.
    Instances {
        job: String,
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Run a job now, outside its schedule; a container job's image, command and environment may
    /// be overridden for that run alone.
    Run {
        job: String,
        /// KEY=value for this run's environment, replacing the job's KEY (repeatable).
        #[arg(long = "env", short = 'e', value_name = "KEY=VALUE")]
        env: Vec<String>,
        /// The command for this run instead of the job's.
        #[arg(long)]
        cmd: Option<String>,
        /// The image for this run instead of the job's.
        #[arg(long)]
        image: Option<String>,
        /// Show the run's states until it ends, then exit with the container's exit code.
        #[arg(long, short)]
        wait: bool,
        /// Give up waiting after this many seconds.
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
    },
    /// A run's output; with -f, followed until the run ends.
    Logs {
        run: String,
        #[arg(long, short)]
        follow: bool,
    },
    /// The system: health of Redis and RabbitMQ, fires, lateness, live instances.
    Status,
    /// What the account's instances cost, by group and job, and its budget left.
    Usage {
        /// First day, YYYY-MM-DD (default: the first of this month).
        #[arg(long)]
        from: Option<String>,
        /// Last day, YYYY-MM-DD (default: today).
        #[arg(long)]
        to: Option<String>,
    },
    /// The account's audit log, newest first: who changed which job how, through which surface.
    Audit {
        /// Only this job's entries.
        #[arg(long)]
        job: Option<String>,
        /// From this instant (RFC 3339).
        #[arg(long)]
        from: Option<String>,
        /// Up to this instant (RFC 3339).
        #[arg(long)]
        to: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Shell completions, printed for the shell named.
    Completions { shell: clap_complete::Shell },
}

#[derive(Debug, Args)]
pub struct ScheduleArgs {
    /// A job file (JSON or TOML, by its extension) sent to /v1/jobs; excludes the flags below.
    #[arg(long, short, conflicts_with_all = ["image", "at", "cmd", "env", "instance_types", "timeout"])]
    pub file: Option<PathBuf>,
    /// The container image.
    #[arg(long, required_unless_present = "file")]
    pub image: Option<String>,
    /// When: an ISO 8601 instant (no offset = UTC).
    #[arg(long, required_unless_present = "file")]
    pub at: Option<String>,
    /// The command, split as a shell would.
    #[arg(long)]
    pub cmd: Option<String>,
    /// NAME=VALUE, repeatable.
    #[arg(long, short)]
    pub env: Vec<String>,
    /// An instance type to launch, repeatable (the first with capacity wins).
    #[arg(long = "instance-type")]
    pub instance_types: Vec<String>,
    /// Seconds the container may run.
    #[arg(long)]
    pub timeout: Option<u64>,
}
