// The spot-scheduler dashboard: a page per hash route (#/jobs, #/jobs/ID, #/jobs/ID/edit,
// #/jobs/new, #/runs/ID, #/overview, #/audit, #/audit/JOB), drawn from the api with the key the user signed in with.
// The key stays in this tab's sessionStorage and goes only in the X-Auth-Token header. Every value
// from the api reaches the page as text (el() never parses HTML), so a job's name cannot inject.
"use strict";

const KEY_STORE = "spot.key";
const REFRESH_MS = 5000;

// Run states: label, a letter for the grid cell (states are told by text, not colour alone), and
// whether the run has ended.
const RUN_STATES = {
  queued: ["queued", "Q", false],
  pending: ["pending", "P", false],
  provisioning: ["provisioning", "V", false],
  booting: ["booting", "B", false],
  running: ["running", "R", false],
  succeeded: ["succeeded", "S", true],
  failed: ["failed", "F", true],
  timed_out: ["timed out", "T", true],
  interrupted: ["interrupted", "I", true],
  cancelled: ["cancelled", "C", true],
  provision_failed: ["provision failed", "X", true],
};

// ----- small helpers -----

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "class") node.className = value;
    // Through the CSSOM: the policy refuses inline style attributes.
    else if (name === "width") node.style.width = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function stateLabel(state) {
  return (RUN_STATES[state] || [state])[0];
}

function stateBadge(state) {
  return el("span", { class: `state state-${state}` }, stateLabel(state));
}

function isEnded(state) {
  return (RUN_STATES[state] || [0, 0, true])[2];
}

// An instant in a time zone, as "2026-12-02 14:03:05".
function inZone(instant, zone) {
  if (!instant) return "—";
  try {
    return new Intl.DateTimeFormat("sv-SE", {
      timeZone: zone, year: "numeric", month: "2-digit", day: "2-digit",
      hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false,
    }).format(new Date(instant));
  } catch (_) {
    return new Date(instant).toISOString().replace("T", " ").slice(0, 19);
  }
}

function utc(instant) {
  return instant ? new Date(instant).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z") : "—";
}

// A duration in milliseconds, the way a person reads it.
function span(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return "—";
  const negative = ms < 0;
  let s = Math.abs(ms) / 1000;
  let text;
  if (s < 10) text = `${s.toFixed(1)} s`;
  else if (s < 90) text = `${Math.round(s)} s`;
  else if (s < 5400) text = `${Math.round(s / 60)} min`;
  else if (s < 172800) text = `${Math.round(s / 3600)} h`;
  else text = `${Math.round(s / 86400)} d`;
  return negative ? `-${text}` : text;
}

function relative(instant) {
  if (!instant) return "—";
  const ms = new Date(instant) - Date.now();
  return ms >= 0 ? `in ${span(ms)}` : `${span(-ms)} ago`;
}

function toast(message, kind) {
  const box = document.getElementById("toast");
  box.textContent = message;
  box.className = kind || "";
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { box.textContent = ""; box.className = ""; }, 6000);
}

// ----- the api -----

class ApiError extends Error {
  constructor(status, message, field) {
    super(message);
    this.status = status;
    this.field = field;
  }
}

function key() {
  return sessionStorage.getItem(KEY_STORE);
}

async function request(method, path, body, signal) {
  const headers = { "X-Auth-Token": key() || "" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method, headers, signal, cache: "no-store",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, "the api does not answer; is it running?");
  }
  return response;
}

async function api(method, path, body) {
  const response = await request(method, path, body, page.signal);
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = text; }
  if (response.status === 403 && path.startsWith("/v1/") && key()) {
    signOut("The key was refused; sign in again.");
    throw new ApiError(403, "key refused");
  }
  if (!response.ok) {
    const message = (data && data.message) || `${response.status} ${response.statusText}`;
    throw new ApiError(response.status, message, data && data.field);
  }
  return data;
}

// Prometheus text exposition to {name: [{labels, value}]}.
function parseMetrics(text) {
  const metrics = {};
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const match = line.match(/^([a-zA-Z_:][\w:]*)(\{(.*)\})?\s+(\S+)$/);
    if (!match) continue;
    const labels = {};
    for (const pair of (match[3] || "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[pair[1]] = pair[2];
    (metrics[match[1]] = metrics[match[1]] || []).push({ labels, value: Number(match[4]) });
  }
  return metrics;
}

// ----- pages and navigation -----

// The page being shown: its abort signal (fetches of a page left are dropped) and its timers.
const page = { controller: new AbortController(), timers: [] };
Object.defineProperty(page, "signal", { get() { return page.controller.signal; } });

function leavePage() {
  page.controller.abort();
  page.controller = new AbortController();
  for (const timer of page.timers) clearInterval(timer);
  page.timers = [];
}

function every(ms, fn) {
  page.timers.push(setInterval(fn, ms));
}

function show(title, ...content) {
  const main = document.getElementById("main");
  main.replaceChildren(...content);
  document.title = `${title} · spot-scheduler`;
}

function signOut(message) {
  sessionStorage.removeItem(KEY_STORE);
  if (location.hash !== "#/sign-in") location.hash = "#/sign-in";
  else route();
  if (message) toast(message, "error");
}

function route() {
  leavePage();
  const nav = document.getElementById("nav");
  const parts = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean).map(decodeURIComponent);
  if (!key()) {
    nav.hidden = true;
    signInPage();
    return;
  }
  nav.hidden = false;
  const [section, id, action] = parts;
  for (const link of nav.querySelectorAll("a")) {
    link.toggleAttribute("aria-current", link.dataset.page === (section || "jobs"));
  }
  const render = {
    jobs: () => (id === "new" ? editPage(null) : id && action === "edit" ? editPage(id) : id ? jobPage(id) : jobsPage()),
    runs: () => runPage(id),
    overview: () => overviewPage(),
    audit: () => auditPage(id),
  }[section || "jobs"];
  (render || jobsPage)().catch((err) => {
    if (err.name === "AbortError") return;
    show("Error", el("h1", {}, "Something went wrong"), el("p", { class: "error" }, err.message));
  });
  document.getElementById("main").focus({ preventScroll: true });
}

// ----- sign-in -----

function signInPage() {
  const input = el("input", { id: "key", name: "key", type: "password", autocomplete: "off", required: true, "aria-describedby": "key-help" });
  const error = el("p", { id: "sign-in-error", class: "error", role: "alert" });
  const form = el("form", { id: "sign-in", class: "card narrow", onsubmit: async (event) => {
    event.preventDefault();
    error.textContent = "";
    sessionStorage.setItem(KEY_STORE, input.value.trim());
    try {
      const response = await request("GET", "/v1/jobs?limit=1");
      if (response.status === 403) throw new ApiError(403, "That key was refused.");
      if (!response.ok) throw new ApiError(response.status, `The api answered ${response.status}.`);
      location.hash = "#/jobs";
      route();
    } catch (err) {
      sessionStorage.removeItem(KEY_STORE);
      error.textContent = err.message;
      input.focus();
    }
  } },
  el("h1", {}, "Sign in"),
  el("label", { for: "key" }, "Account key"),
  input,
  el("p", { id: "key-help", class: "muted" }, "The key is kept for this tab only and sent to the api in a header, never in a URL."),
  error,
  el("button", { type: "submit", class: "primary" }, "Sign in"));
  show("Sign in", form);
  input.focus();
}

// ----- jobs -----

const filters = { group: "", name: "", state: "" };

async function jobsPage() {
  const group = el("input", { id: "filter-group", type: "search", value: filters.group, placeholder: "any" });
  const name = el("input", { id: "filter-name", type: "search", value: filters.name, placeholder: "any" });
  const state = el("select", { id: "filter-state" },
    [["", "any"], ["enabled", "enabled"], ["disabled", "disabled"], ["paused", "paused"], ["failing", "last run failed"],
      ["active", "a run under way"]].map(([value, label]) =>
      el("option", { value, selected: filters.state === value }, label)));
  const table = el("div", { id: "jobs", "aria-live": "polite" }, el("p", { class: "muted" }, "Loading…"));
  const load = async () => {
    const query = new URLSearchParams({ limit: "200", last_runs: "10" });
    if (filters.group) query.set("group", filters.group);
    const data = await api("GET", `/v1/jobs?${query}`);
    table.replaceChildren(jobsTable(data.jobs.filter(matchesFilters), load));
  };
  const refilter = () => {
    filters.group = group.value.trim();
    filters.name = name.value.trim().toLowerCase();
    filters.state = state.value;
    load().catch(reportError);
  };
  for (const input of [group, name]) input.addEventListener("input", debounce(refilter, 250));
  state.addEventListener("change", refilter);
  show("Jobs",
    el("div", { class: "heading" }, el("h1", {}, "Jobs"), el("a", { class: "button primary", href: "#/jobs/new", id: "new-job" }, "New job")),
    el("form", { class: "filters", role: "search", onsubmit: (e) => { e.preventDefault(); refilter(); } },
      el("label", {}, "Group ", group), el("label", {}, "Name ", name), el("label", {}, "State ", state)),
    table);
  await load();
  every(REFRESH_MS, () => load().catch(reportError));
}

function matchesFilters(job) {
  const last = (job.last_runs || [])[0];
  if (filters.name && !`${job.name} ${job.id}`.toLowerCase().includes(filters.name)) return false;
  switch (filters.state) {
    case "enabled": return job.enabled;
    case "disabled": return !job.enabled;
    case "paused": return !!job.paused;
    case "failing": return !!last && isEnded(last.state) && last.state !== "succeeded";
    case "active": return (job.last_runs || []).some((run) => !isEnded(run.state));
    default: return true;
  }
}

function jobsTable(jobs, reload) {
  if (!jobs.length) {
    return el("p", { class: "empty" }, "No jobs match. ", el("a", { href: "#/jobs/new" }, "Create one."));
  }
  return el("div", { class: "scroll" }, el("table", { class: "jobs" },
    el("thead", {}, el("tr", {}, ["Name", "Group", "Schedule", "Zone", "Next fire", "State", "Last runs", "Actions"].map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, jobs.map((job) => el("tr", { "data-job": job.id },
      el("td", { "data-label": "Name" }, el("a", { href: `#/jobs/${encodeURIComponent(job.id)}` }, job.name || job.id)),
      el("td", { "data-label": "Group" }, job.group),
      el("td", { "data-label": "Schedule" }, el("code", {}, job.schedule)),
      el("td", { "data-label": "Zone" }, job.timezone),
      el("td", { "data-label": "Next fire", title: job.next_fire_at ? `${inZone(job.next_fire_at, job.timezone)} ${job.timezone}` : "" }, relative(job.next_fire_at)),
      el("td", { "data-label": "State" }, stateFlag(job), job.paused && job.paused.note ? el("div", { class: "pause-note muted" }, job.paused.note) : null),
      el("td", { "data-label": "Last runs" }, runGrid(job.last_runs || [])),
      el("td", { "data-label": "Actions", class: "actions" }, jobActions(job, reload)))))));
}

// The job's latest runs as cells, oldest on the left as in Airflow's grid.
function runGrid(runs) {
  if (!runs.length) return el("span", { class: "muted" }, "no runs yet");
  return el("ol", { class: "grid", "aria-label": "latest runs, oldest first" },
    runs.slice().reverse().map((run) => {
      const label = `${stateLabel(run.state)}, ${utc(run.scheduled_at)}, attempt ${run.attempt}`;
      return el("li", {}, el("a", {
        class: `cell state-${run.state}`, href: `#/runs/${encodeURIComponent(run.id)}`,
        title: label, "aria-label": label,
      }, (RUN_STATES[run.state] || ["", "?"])[1]));
    }));
}

// A job's state as a flag: enabled, disabled, or paused (with its note as the title).
function stateFlag(job) {
  if (job.paused) return el("span", { class: "flag off paused", title: job.paused.note || "" }, "paused");
  return el("span", { class: job.enabled ? "flag on" : "flag off" }, job.enabled ? "enabled" : "disabled");
}

function jobActions(job, reload, after) {
  const act = async (what, method, path, message) => {
    try {
      await api(method, path);
      toast(message);
      if (after) after(what); else await reload();
    } catch (err) { reportError(err); }
  };
  const id = encodeURIComponent(job.id);
  return [
    el("button", { type: "button", class: "run-now", disabled: !job.enabled, title: job.enabled ? "" : "enable the job to run it",
      onclick: () => act("run", "POST", `/v1/jobs/${id}/run`, `${job.name || job.id}: run requested`) }, "Run now"),
    job.enabled
      ? el("button", { type: "button", class: "disable", onclick: () => act("disable", "POST", `/v1/jobs/${id}/disable`, `${job.name || job.id} disabled`) }, "Disable")
      : job.paused
        ? el("button", { type: "button", class: "resume", onclick: () => act("resume", "POST", `/v1/jobs/${id}/resume`, `${job.name || job.id} resumed`) }, "Resume")
        : el("button", { type: "button", class: "enable", onclick: () => act("enable", "POST", `/v1/jobs/${id}/enable`, `${job.name || job.id} enabled`) }, "Enable"),
    job.enabled
      ? el("button", { type: "button", class: "pause", onclick: async () => {
        const note = prompt(`Pause ${job.name || job.id}: why? (shown wherever the job is listed)`, "");
        if (note === null) return;
        try {
          await api("POST", `/v1/jobs/${id}/pause`, { note });
          toast(`${job.name || job.id} paused`);
          if (after) after("pause"); else await reload();
        } catch (err) { reportError(err); }
      } }, "Pause…")
      : null,
    el("button", { type: "button", class: "delete danger", onclick: () => {
      if (confirm(`Delete the job ${job.name || job.id} and its runs?`)) act("delete", "DELETE", `/v1/jobs/${id}`, `${job.name || job.id} deleted`);
    } }, "Delete"),
  ];
}

function reportError(err) {
  if (err.name !== "AbortError") toast(err.message, "error");
}

function debounce(fn, ms) {
  let timer;
  return (...args) => { clearTimeout(timer); timer = setTimeout(() => fn(...args), ms); };
}

// ----- one job -----

async function jobPage(id) {
  const path = `/v1/jobs/${encodeURIComponent(id)}`;
  const [job, next] = await Promise.all([api("GET", path), api("GET", `${path}/next?count=10`)]);
  const runs = el("div", { id: "runs", "aria-live": "polite" });
  const loadRuns = async () => {
    const data = await api("GET", `${path}/runs?limit=25`);
    runs.replaceChildren(runTimelines(data.runs));
  };
  const actions = jobActions(job, () => jobPage(id), (what) => {
    if (what === "delete") location.hash = "#/jobs";
    else if (what === "run") loadRuns().catch(reportError);
    else route();
  });
  show(job.name || job.id,
    el("nav", { class: "crumbs" }, el("a", { href: "#/jobs" }, "Jobs"), " / ", job.name || job.id),
    el("div", { class: "heading" },
      el("h1", {}, job.name || job.id, " ", stateFlag(job)),
      el("div", { class: "actions" }, actions,
        el("a", { class: "button", href: `#/audit/${encodeURIComponent(id)}`, id: "job-audit" }, "Audit log"),
        el("a", { class: "button", href: `#/jobs/${encodeURIComponent(id)}/edit`, id: "edit-job" }, "Edit"))),
    el("section", { class: "card" }, el("h2", {}, "Job"), details([
      ["Id", el("code", {}, job.id)],
      ["Group", job.group],
      ["Schedule", el("code", {}, job.schedule)],
      ["Time zone", job.timezone],
      ["Runner", runnerText(job.runner)],
      ...(job.runner.secrets && Object.keys(job.runner.secrets).length ? [["Secrets", el("span", { id: "secret-names" },
        Object.keys(job.runner.secrets).join(", "), " (read from AWS at launch)")]] : []),
      ...(job.runner.array_size ? [["Array", el("span", { id: "job-array" },
        `each fire runs ${job.runner.array_size} copies (SPOT_ARRAY_INDEX 0 to ${job.runner.array_size - 1}), `,
        `${Math.min(job.runner.array_parallelism || 100, job.runner.array_size)} at a time`)]] : []),
      ["Description", job.description || "—"],
      ["Cost of kept runs", money(job.cost_usd_total)],
      ...(job.paused ? [["Paused", el("span", { id: "pause-note" }, `since ${utc(job.paused.at)}: ${job.paused.note || "no note"}`)]] : []),
      ["Policies", el("code", {}, JSON.stringify(job.policies))],
      ...(job.policies.exclude && job.policies.exclude.length ? [["Excluded", el("span", { id: "exclusions" },
        job.policies.exclude.join(", "), ` (in ${job.timezone})`)]] : []),
      ...(job.policies.jitter_secs ? [["Jitter", el("span", { id: "jitter" },
        `each fire starts up to ${job.policies.jitter_secs} s after its instant (the fires below include it)`)]] : []),
      ...(job.policies.max_runs ? [["Runs left", el("span", { id: "remaining-runs" },
        `${job.remaining_runs} of ${job.policies.max_runs} scheduled fires`,
        job.policies.on_last_run && job.policies.on_last_run !== "keep" ? `; then the job ${job.policies.on_last_run === "delete" ? "deletes" : "disables"} itself` : "")]] : []),
    ])),
    el("section", { class: "card" }, el("h2", {}, "Next 10 fires"),
      next.next.length
        ? el("div", { class: "scroll" }, el("table", { id: "next-fires" },
          el("thead", {}, el("tr", {}, el("th", { scope: "col" }, `In ${next.timezone}`), el("th", { scope: "col" }, "UTC"), el("th", { scope: "col" }, "From now"))),
          el("tbody", {}, next.next.map((at) => el("tr", {}, el("td", {}, inZone(at, next.timezone)), el("td", {}, utc(at)), el("td", {}, relative(at)))))))
        : el("p", { class: "muted" }, job.enabled ? "No more fires: the schedule has ended." : job.paused ? "Paused: nothing will fire until it is resumed." : "Disabled: nothing will fire."),
      next.skipped && next.skipped.length
        ? el("p", { id: "skipped-fires", class: "muted" }, "Skipped by an exclusion: ",
          next.skipped.map((at) => inZone(at, next.timezone)).join(", "))
        : null),
    backfillCard(job, () => loadRuns().catch(reportError)),
    el("section", { class: "card" }, el("h2", {}, "Runs"), runs));
  await loadRuns();
  every(REFRESH_MS, () => loadRuns().catch(reportError));
}

function runnerText(runner) {
  switch (runner.type) {
    case "container": return `container ${runner.image}${runner.cmd ? ` · ${runner.cmd}` : ""}`;
    case "dummy": return `dummy · ${runner.template}`;
    default: return runner.type;
  }
}

function details(rows) {
  return el("dl", { class: "details" }, rows.map(([term, value]) => [el("dt", {}, term), el("dd", { "data-term": term }, value)]));
}

// Each run's transitions on a line: a bar per state, as long as the run stayed in it.
function runTimelines(runs) {
  if (!runs.length) return el("p", { class: "muted" }, "No runs yet.");
  return el("ol", { class: "timelines" }, runs.map((run) => {
    const steps = Object.entries(run.transitions).map(([state, at]) => [state, new Date(at)]).sort((a, b) => a[1] - b[1]);
    const start = steps.length ? steps[0][1] : new Date(run.scheduled_at);
    const end = isEnded(run.state) && steps.length ? steps[steps.length - 1][1] : new Date();
    const total = Math.max(end - start, 1);
    const bar = el("div", { class: "bar-track", "aria-hidden": "true" }, steps.map(([state, at], i) => {
      const until = i + 1 < steps.length ? steps[i + 1][1] : end;
      const width = Math.max(((until - at) / total) * 100, isEnded(state) ? 0 : 1);
      return el("span", { class: `segment state-${state}`, width: `${width.toFixed(2)}%`, title: stateLabel(state) });
    }));
    return el("li", { class: "timeline", "data-run": run.id },
      el("div", { class: "timeline-head" },
        el("a", { href: `#/runs/${encodeURIComponent(run.id)}` }, utc(run.scheduled_at)),
        " ", stateBadge(run.state), ` attempt ${run.attempt}`,
        run.relaunches ? ` · relaunched ${run.relaunches}×` : "",
        run.backfill ? el("span", { class: "backfill-mark" }, ` · backfill ${run.backfill.slice(0, 8)}`) : "",
        run.late_alert_at ? el("span", { class: "alert-mark", title: `late since ${utc(run.late_alert_at)}` }, " · late") : "",
        run.long_running_alert_at ? el("span", { class: "alert-mark", title: `long running since ${utc(run.long_running_alert_at)}` }, " · long running") : "",
        run.exit_code !== null && run.exit_code !== undefined ? ` · exit ${run.exit_code}` : "",
        run.error ? el("span", { class: "error" }, ` · ${run.error}`) : ""),
      bar,
      el("ol", { class: "steps" }, steps.map(([state, at]) =>
        el("li", {}, el("time", { datetime: at.toISOString() }, utc(at.toISOString())), " ", stateLabel(state),
          at > start ? el("span", { class: "muted" }, ` +${span(at - start)}`) : ""))));
  }));
}

// ----- create and edit -----

async function editPage(id) {
  const job = id ? await api("GET", `/v1/jobs/${encodeURIComponent(id)}`) : null;
  const runner = job ? job.runner : { type: "container", image: "", cmd: "" };
  const field = (name, label, input, help) => el("div", { class: "field", "data-field": name },
    el("label", { for: `f-${name}` }, label), input, help ? el("p", { class: "muted" }, help) : null,
    el("p", { class: "field-error", id: `f-${name}-error`, role: "alert" }));
  const input = (name, value, attrs) => el("input", Object.assign({ id: `f-${name}`, name, value: value ?? "", "aria-describedby": `f-${name}-error` }, attrs));
  const type = el("select", { id: "f-runner-type", name: "runner.type" },
    ["container", "dummy"].map((t) => el("option", { value: t, selected: runner.type === t }, t)));
  const containerFields = el("div", {},
    field("runner.image", "Image", input("runner.image", runner.image, { placeholder: "busybox:local" })),
    field("runner.cmd", "Command", input("runner.cmd", runner.cmd, { placeholder: "the image's default" })));
  const dummyFields = el("div", {}, field("runner.template", "Template", input("runner.template", runner.template, { placeholder: "hello {{account}}" })));
  const showRunner = () => { containerFields.hidden = type.value !== "container"; dummyFields.hidden = type.value !== "dummy"; };
  type.addEventListener("change", showRunner);
  const policies = el("textarea", { id: "f-policies", name: "policies", rows: 4, "aria-describedby": "f-policies-error" },
    job ? JSON.stringify(job.policies, null, 2) : "{}");
  const enabled = el("input", { id: "f-enabled", name: "enabled", type: "checkbox", checked: job ? job.enabled : true });
  const formError = el("p", { class: "error", id: "form-error", role: "alert" });
  const form = el("form", { id: "job-form", class: "card", novalidate: true, onsubmit: async (event) => {
    event.preventDefault();
    for (const node of form.querySelectorAll(".field-error")) node.textContent = "";
    for (const node of form.querySelectorAll("[aria-invalid]")) node.removeAttribute("aria-invalid");
    formError.textContent = "";
    const value = (name) => form.elements[name].value.trim();
    let parsedPolicies;
    try { parsedPolicies = JSON.parse(policies.value || "{}"); } catch (err) {
      showFieldError(form, formError, "policies", `policies: not JSON (${err.message})`);
      return;
    }
    const body = {
      name: value("name"), group: value("group") || "default", description: value("description"),
      schedule: value("schedule"), timezone: value("timezone") || "UTC", enabled: enabled.checked,
      policies: parsedPolicies, tags: job ? job.tags : [],
      runner: type.value === "dummy"
        ? { type: "dummy", template: value("runner.template") }
        : containerRunner(runner, value("runner.image"), value("runner.cmd")),
    };
    try {
      const saved = id
        ? await api("PUT", `/v1/jobs/${encodeURIComponent(id)}`, body)
        : await api("POST", "/v1/jobs", body);
      toast(`${saved.name || saved.id} saved`);
      location.hash = `#/jobs/${encodeURIComponent(saved.id)}`;
    } catch (err) {
      if (err.name === "AbortError") return;
      showFieldError(form, formError, err.field, err.message);
    }
  } },
  el("h1", {}, id ? `Edit ${job.name || job.id}` : "New job"),
  field("name", "Name", input("name", job && job.name, { required: true })),
  field("group", "Group", input("group", job ? job.group : "default")),
  field("schedule", "Schedule", input("schedule", job && job.schedule, { required: true, placeholder: "*/5 * * * *" }),
    "Cron (5 or 6 fields), an RFC 3339 instant for a one-shot, or @every 10m."),
  field("timezone", "Time zone", input("timezone", job ? job.timezone : "UTC", { placeholder: "Europe/Berlin" })),
  field("runner.type", "Runner", type),
  containerFields, dummyFields,
  field("description", "Description", input("description", job && job.description)),
  field("policies", "Policies (JSON)", policies, "Retries, timeout, concurrency, misfire grace, jitter: see the README."),
  el("div", { class: "field inline" }, enabled, el("label", { for: "f-enabled" }, "Enabled")),
  formError,
  el("div", { class: "actions" },
    el("button", { type: "submit", class: "primary", id: "save-job" }, id ? "Save" : "Create"),
    el("a", { class: "button", href: id ? `#/jobs/${encodeURIComponent(id)}` : "#/jobs" }, "Cancel")));
  showRunner();
  show(id ? "Edit job" : "New job",
    el("nav", { class: "crumbs" }, el("a", { href: "#/jobs" }, "Jobs"), " / ", id ? job.name || job.id : "new"), form);
  form.elements.name.focus();
}

// The container runner the form describes, keeping the fields it does not show (limits, types…).
function containerRunner(current, image, cmd) {
  const kept = ["env", "instance_types", "max_price", "subnets", "disk_gb", "on_demand_fallback", "limits", "stop_signal", "stop_grace_secs", "secrets", "array_size", "array_parallelism"];
  const runner = { type: "container", image, cmd: cmd || null };
  if (current.type === "container") for (const name of kept) if (current[name] !== undefined) runner[name] = current[name];
  return runner;
}

// Puts the api's message beside the field it names (or the form's own when it names none it shows).
function showFieldError(form, formError, field, message) {
  const known = field && [...form.querySelectorAll("[data-field]")].find((node) => field === node.dataset.field || field.startsWith(`${node.dataset.field}.`));
  if (known) {
    known.querySelector(".field-error").textContent = message;
    const control = known.querySelector("input, select, textarea");
    control.setAttribute("aria-invalid", "true");
    control.focus();
  } else {
    formError.textContent = message;
  }
}

// A job's backfills: a form to run a past range, and each backfill's progress with a Cancel.
function backfillCard(job, onChange) {
  const base = `/v1/jobs/${encodeURIComponent(job.id)}`;
  const list = el("div", { id: "backfills" });
  const load = async () => {
    const data = await api("GET", `${base}/backfills`);
    list.replaceChildren(data.backfills.length
      ? el("table", {},
        el("thead", {}, el("tr", {}, ["Backfill", "From (UTC)", "To (UTC)", "Runs", "Waiting", "Under way", "State", ""].map((h) => el("th", { scope: "col" }, h)))),
        el("tbody", {}, data.backfills.map((b) => el("tr", { "data-backfill": b.id },
          el("td", {}, el("code", {}, b.id.slice(0, 8))), el("td", {}, utc(b.from)), el("td", {}, utc(b.to)),
          el("td", {}, String(b.total)), el("td", {}, String(b.waiting)), el("td", {}, String(b.under_way)), el("td", { class: "backfill-state" }, b.state),
          el("td", {}, b.state === "running" ? el("button", { type: "button", class: "cancel-backfill danger", onclick: async () => {
            try {
              await api("POST", `${base}/backfills/${encodeURIComponent(b.id)}/cancel`);
              toast("backfill cancelled");
              await load();
              onChange();
            } catch (err) { reportError(err); }
          } }, "Cancel") : "")))))
      : el("p", { class: "muted" }, "No backfills."));
  };
  const from = el("input", { type: "datetime-local", id: "backfill-from", required: true, step: "1" });
  const to = el("input", { type: "datetime-local", id: "backfill-to", required: true, step: "1" });
  const concurrency = el("input", { type: "number", id: "backfill-concurrency", min: "1", max: "100", value: "1" });
  const form = el("form", { class: "backfill-form", onsubmit: async (event) => {
    event.preventDefault();
    try {
      const made = await api("POST", `${base}/backfill`, {
        from: new Date(`${from.value}Z`).toISOString(), to: new Date(`${to.value}Z`).toISOString(),
        concurrency: Number(concurrency.value),
      });
      toast(`backfill of ${made.total} runs started`);
      await load();
      onChange();
    } catch (err) { reportError(err); }
  } },
  el("label", {}, "From (UTC) ", from), " ", el("label", {}, "To (UTC) ", to), " ",
  el("label", {}, "At once ", concurrency), " ", el("button", { type: "submit", id: "backfill-submit" }, "Backfill"));
  load().catch(reportError);
  return el("section", { class: "card" }, el("h2", {}, "Backfills"),
    el("p", { class: "muted" }, "Run the job for each instant of its schedule in a past range (10,000 at most)."), form, list);
}

// ----- one run -----

// Each attempt to tell a webhook of the run's events (policies.notify): the target's host, never its URL.
function notificationList(attempts) {
  const outcome = { delivered: "delivered", will_retry: "failed, tried again", gave_up: "given up" };
  return el("ol", { id: "run-notifications" }, attempts.map((a) => el("li", {},
    `${a.event} → ${a.host}: ${outcome[a.outcome] || a.outcome}`,
    a.status ? ` (${a.status})` : "", a.error ? ` (${a.error})` : "",
    `, attempt ${a.attempt}, ${utc(a.at)}`)));
}

// An array fire's copies as a grid of cells in index order, each the index's latest attempt,
// read a page of 1,000 at a time.
async function copiesGrid(run) {
  const copies = [];
  for (let offset = 0; offset !== null && offset !== undefined;) {
    const page = await api("GET", `/v1/runs/${encodeURIComponent(run.id)}/children?offset=${offset}`);
    copies.push(...page.children);
    offset = page.next_offset;
  }
  const counts = {};
  for (const copy of copies) counts[copy.state] = (counts[copy.state] || 0) + 1;
  const tally = Object.entries(counts).map(([state, n]) => `${n} ${stateLabel(state)}`).join(", ");
  return [
    el("p", { id: "copies-tally" }, `${run.array_size} copies: ${tally || "none recorded yet"}`),
    el("ol", { class: "grid copies", id: "copies", "aria-label": "the copies, by index" },
      copies.map((copy) => {
        const label = `copy ${copy.array_index}: ${stateLabel(copy.state)}, attempt ${copy.attempt}`;
        return el("li", {}, el("a", {
          class: `cell state-${copy.state}`, href: `#/runs/${encodeURIComponent(copy.id)}`,
          title: label, "aria-label": label, "data-index": copy.array_index,
        }, (RUN_STATES[copy.state] || ["", "?"])[1]));
      })),
  ];
}

async function runPage(id) {
  const path = `/v1/runs/${encodeURIComponent(id)}`;
  let run = await api("GET", path);
  const job = await api("GET", `/v1/jobs/${encodeURIComponent(run.job_id)}`).catch(() => null);
  const summary = el("section", { class: "card", id: "run-summary" });
  const instance = el("section", { class: "card", id: "instance" });
  const output = el("pre", { id: "output", tabindex: "0", "aria-label": "output", "aria-live": "off" });
  const outputState = el("p", { class: "muted", id: "output-state" });
  const draw = async () => {
    summary.replaceChildren(el("h2", {}, "Run"), details([
      ["State", stateBadge(run.state)],
      ["Scheduled", `${utc(run.scheduled_at)}${job ? ` (${inZone(run.scheduled_at, job.timezone)} ${job.timezone})` : ""}`],
      ["Attempt", run.attempt],
      ...(run.array_parent ? [["Array copy", el("span", { id: "array-copy" }, `index ${run.array_index} of ${run.array_size}, of `,
        el("a", { href: `#/runs/${encodeURIComponent(run.array_parent)}` }, "its fire's run"))]] : []),
      ...(run.previous_run ? [["Follows", el("a", { href: `#/runs/${encodeURIComponent(run.previous_run)}` }, "the attempt before")]] : []),
      ["Exit code", run.exit_code ?? "—"],
      ["Reason", run.error || "—"],
      ["Relaunches", run.relaunches ? el("ol", {}, (run.relaunch_reasons || []).map((why) => el("li", {}, why))) : "—"],
      ["Container", run.container_id ? el("code", {}, run.container_id.slice(0, 12)) : "—"],
      ...(run.overrides ? [["Overrides", el("code", { id: "run-overrides" }, JSON.stringify(run.overrides))]] : []),
      ...(run.late_alert_at ? [["Late", el("span", { class: "alert-mark" }, `its code had not started by ${utc(run.late_alert_at)} (alert_late_secs)`)]] : []),
      ...(run.long_running_alert_at ? [["Long running", el("span", { class: "alert-mark" }, `still running at ${utc(run.long_running_alert_at)} (alert_running_secs)`)]] : []),
      ...(run.notifications && run.notifications.length ? [["Notifications", notificationList(run.notifications)]] : []),
    ]), runTimelines([run]));
    if (run.array_size && run.array_parent === undefined) {
      instance.replaceChildren(el("h2", {}, "Copies"), ...await copiesGrid(run));
    } else if (run.instance_id) {
      const found = await api("GET", `/v1/instances/${encodeURIComponent(run.instance_id)}`).catch(() => null);
      instance.replaceChildren(el("h2", {}, "Instance"), found ? instanceDetails(found, run.cost) : el("p", { class: "muted" }, run.instance_id));
    } else {
      instance.replaceChildren(el("h2", {}, "Instance"), el("p", { class: "muted" }, job && job.runner.type === "container" ? "Not launched yet." : "This runner needs no instance."));
    }
  };
  show(`Run ${id}`,
    el("nav", { class: "crumbs" }, el("a", { href: "#/jobs" }, "Jobs"), " / ",
      el("a", { href: `#/jobs/${encodeURIComponent(run.job_id)}` }, job ? job.name || job.id : run.job_id), " / run"),
    el("h1", {}, "Run ", el("code", {}, id)),
    summary, instance,
    el("section", { class: "card" }, el("h2", {}, "Output"), outputState, output));
  await draw();
  followOutput(path, run, output, outputState).catch(reportError);
  every(2000, async () => {
    if (isEnded(run.state)) return;
    try { run = await api("GET", path); await draw(); } catch (err) { reportError(err); }
  });
}

// The run's output: streamed (`follow=true`) until the run ends, or read whole when it has.
async function followOutput(path, run, output, outputState) {
  const live = !isEnded(run.state);
  outputState.textContent = live ? "Following the output live…" : "The run has ended.";
  const response = await request("GET", `${path}/logs${live ? "?follow=true" : ""}`, undefined, page.signal);
  if (!response.ok) throw new ApiError(response.status, `output: ${response.status}`);
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  output.textContent = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    const atBottom = output.scrollTop + output.clientHeight >= output.scrollHeight - 4;
    output.append(decoder.decode(value, { stream: true }));
    if (atBottom) output.scrollTop = output.scrollHeight;
  }
  if (!output.textContent) output.textContent = "(no output)";
  outputState.textContent = "The run has ended.";
}

function money(usd) {
  return usd === null || usd === undefined ? "—" : `$${usd < 0.01 ? usd.toPrecision(3) : usd.toFixed(4)}`;
}

function instanceDetails(instance, cost) {
  const at = (state) => instance.transitions[state];
  const launched = at("requested");
  const ended = at("terminated");
  return details([
    ["Id", el("code", {}, instance.id)],
    ["Provider", instance.provider],
    ["Type", instance.instance_type || "—"],
    ["Market", instance.lifecycle || "—"],
    ["State", instance.state],
    ["Launched", utc(launched)],
    ["Terminated", ended ? utc(ended) : "not yet"],
    ["Lifetime", launched ? `${span((ended ? new Date(ended) : new Date()) - new Date(launched))}${ended ? "" : " so far"}` : "—"],
    ["Price", cost ? `${money(cost.usd_per_hour)} an hour (${cost.price_source})` : "—"],
    ["Billed", cost ? `${cost.billed_seconds} s${cost.terminated ? "" : " so far"}` : "—"],
    ["Cost", cost ? `${money(cost.usd)}${cost.terminated ? "" : " so far"}` : "—"],
    cost && cost.leaked_seconds ? ["Leaked", `${cost.leaked_seconds} s past the run's end`] : null,
  ].filter(Boolean));
}

// ----- overview -----

// ----- audit log -----

// Who changed what, newest first: the account's log, or one job's (#/audit/JOB).
async function auditPage(jobId) {
  const query = jobId ? `?job=${encodeURIComponent(jobId)}&limit=200` : "?limit=200";
  const data = await api("GET", `/v1/audit${query}`);
  const value = (v) => (v === null || v === undefined ? "—" : typeof v === "string" ? v : JSON.stringify(v));
  const changes = (entry) => Object.entries(entry.changes || {}).map(([field, change]) =>
    el("li", {}, el("code", {}, field), `: ${value(change.from)} → ${value(change.to)}`));
  const rows = data.entries.map((entry) => el("tr", {},
    el("td", { "data-label": "When" }, utc(entry.at)),
    el("td", { "data-label": "Action" }, entry.action),
    el("td", { "data-label": "Job" }, el("a", { href: `#/jobs/${encodeURIComponent(entry.job_id)}` }, entry.job_id)),
    el("td", { "data-label": "Surface" }, entry.surface),
    el("td", { "data-label": "Key" }, el("code", {}, entry.key), entry.admin ? " (admin)" : ""),
    el("td", { "data-label": "Changes" }, entry.detail ? el("code", {}, JSON.stringify(entry.detail)) : "",
      el("ul", { class: "changes" }, changes(entry)))));
  show("Audit",
    el("nav", { class: "crumbs" }, jobId ? [el("a", { href: "#/audit" }, "Audit"), " / ", jobId] : "Audit"),
    el("h1", {}, jobId ? "Audit log of a job" : "Audit log"),
    rows.length
      ? el("table", { id: "audit" }, el("thead", {}, el("tr", {}, ["When", "Action", "Job", "Surface", "Key", "Changes"].map((h) => el("th", {}, h)))), el("tbody", {}, rows))
      : el("p", { class: "empty" }, "Nothing recorded yet."));
}

async function overviewPage() {
  const tiles = el("div", { class: "tiles" });
  const fires = el("section", { class: "card chart", id: "chart-fires" }, el("h2", {}, "Fires per minute, last hour (all accounts)"));
  const lateness = el("section", { class: "card chart", id: "chart-lateness" }, el("h2", {}, "Firing lateness (all accounts)"));
  const states = el("section", { class: "card chart", id: "chart-states" }, el("h2", {}, "Runs by state (last 10 of each job)"));
  const instances = el("section", { class: "card chart", id: "chart-instances" }, el("h2", {}, "Live instances (while this page is open)"));
  const samples = [];
  show("Overview", el("h1", {}, "Overview"), tiles, el("div", { class: "charts" }, fires, lateness, states, instances));
  const load = async () => {
    const [overview, metricsText, jobs] = await Promise.all([
      api("GET", "/v1/overview"),
      request("GET", "/metrics", undefined, page.signal).then((r) => r.text()),
      api("GET", "/v1/jobs?limit=1000&last_runs=10"),
    ]);
    const metrics = parseMetrics(metricsText);
    const alive = ((metrics.spot_scheduler_instances_alive || [])[0] || { value: overview.live_instances }).value;
    samples.push([new Date(), alive]);
    if (samples.length > 120) samples.shift();
    const byState = {};
    for (const job of jobs.jobs) for (const run of job.last_runs || []) byState[run.state] = (byState[run.state] || 0) + 1;
    const fireCount = ((metrics.spot_scheduler_fire_lateness_seconds_count || [])[0] || { value: 0 }).value;
    tiles.replaceChildren(
      tile("Jobs", jobs.jobs.length),
      tile("Live instances", alive),
      tile("Dead letters", overview.dead_letters ?? "RabbitMQ away", overview.dead_letters ? "warn" : ""),
      tile("Fires since start", fireCount));
    replaceChart(fires, barChart(overview.fires_per_minute.map((m) => [new Date(m.minute).toISOString().slice(11, 16), m.fires]), { every: 10 }));
    replaceChart(lateness, latenessChart(metrics.spot_scheduler_fire_lateness_seconds_bucket || []));
    replaceChart(states, barChart(Object.keys(RUN_STATES).filter((s) => byState[s]).map((s) => [stateLabel(s), byState[s], s]), { every: 1 }));
    replaceChart(instances, barChart(samples.map(([at, n]) => [at.toISOString().slice(11, 19), n]), { every: 12, zeroIsData: true }));
  };
  await load();
  every(REFRESH_MS, () => load().catch(reportError));
}

function tile(label, value, kind) {
  return el("div", { class: `tile ${kind || ""}` }, el("span", { class: "tile-value" }, value), el("span", { class: "tile-label" }, label));
}

function replaceChart(section, chart) {
  section.replaceChildren(section.querySelector("h2"), chart);
}

// The lateness histogram from cumulative Prometheus buckets, one bar per bucket.
function latenessChart(buckets) {
  let previous = 0;
  const bars = buckets.map((b) => {
    const le = b.labels.le;
    const count = b.value - previous;
    previous = b.value;
    const label = le === "+Inf" ? ">60s" : Number(le) < 1 ? `${Math.round(Number(le) * 1000)}ms` : `${le}s`;
    return [label, count];
  });
  return barChart(bars, { every: 2 });
}

// A bar chart in SVG, with the figures also in a table for screen readers. Bars: [label, value,
// state?] (a state colours its bar).
function barChart(bars, { every: labelEvery, zeroIsData }) {
  if (!bars.length || (!zeroIsData && bars.every(([, v]) => !v))) {
    return el("p", { class: "muted no-data" }, "Nothing yet.");
  }
  const width = 600, height = 180, pad = 24;
  const max = Math.max(...bars.map(([, v]) => v), 1);
  const step = (width - pad) / bars.length;
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height + 30}`, role: "img", class: "bars", "aria-hidden": "true" },
    svg("text", { x: 0, y: 12, class: "axis" }, String(max)),
    svg("line", { x1: pad, y1: height, x2: width, y2: height, class: "axis-line" }),
    bars.map(([label, value, state], i) => {
      const h = (value / max) * (height - 20);
      return [
        svg("rect", { x: pad + i * step + 1, y: height - h, width: Math.min(Math.max(step - 2, 1), 48), height: h, class: state ? `bar state-${state}` : "bar" },
          svg("title", {}, `${label}: ${value}`)),
        i % labelEvery === 0 ? svg("text", { x: pad + i * step, y: height + 16, class: "axis" }, label) : null,
      ];
    }));
  const table = el("table", { class: "visually-hidden" },
    el("tbody", {}, bars.map(([label, value]) => el("tr", {}, el("th", { scope: "row" }, label), el("td", {}, value)))));
  return el("div", {}, chart, table);
}

// ----- start -----

window.addEventListener("hashchange", route);
document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("sign-out").addEventListener("click", () => signOut("Signed out."));
  route();
});
