// The ragserve web page (docs/web.md). Plain browser JavaScript, no dependencies. Everything the
// server sends is written into the page as text (textContent, text nodes), never as markup: the
// passages are people's documents.
"use strict";

const TOKEN_KEY = "ragserve.token"; // session storage: this tab only, gone when it closes
const JOBS_KEY = "ragserve.jobs";
const JOB_POLL_MS = 500;
const READY_POLL_MS = 2000;

const $ = (id) => document.getElementById(id);

// --- talking to the server ---------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

function authHeaders(extra = {}) {
  const headers = { ...extra };
  if (token()) headers.Authorization = `Bearer ${token()}`;
  return headers;
}

// The error of a response that is not 2xx, from its JSON body {"error": {"code", "message"}}.
async function errorOf(response) {
  let body = null;
  try {
    body = await response.json();
  } catch (_) {
    body = null; // not JSON (a proxy's page): the status line says what there is to say
  }
  const error = body && body.error ? body.error : {};
  let message = error.message || response.statusText || "request failed";
  const retry = response.headers.get("Retry-After");
  if (retry) message += ` (retry after ${retry} s)`;
  if (response.status === 401 || response.status === 403) message += " Enter a token above.";
  return new ApiError(response.status, error.code || `http_${response.status}`, message);
}

async function api(method, path, { json, form, signal } = {}) {
  const init = { method, headers: authHeaders(), signal };
  if (json !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  } else if (form !== undefined) {
    init.body = form; // the browser sets the multipart boundary
  }
  const response = await fetch(path, init);
  if (!response.ok) throw await errorOf(response);
  return response.status === 204 ? null : response.json();
}

function showError(element, error) {
  if (!error) {
    element.hidden = true;
    element.textContent = "";
    return;
  }
  element.hidden = false;
  element.textContent = error instanceof ApiError ? `${error.code}: ${error.message}` : String(error.message || error);
}

function note(text) {
  const element = $("manage-note");
  element.hidden = !text;
  element.textContent = text || "";
}

// --- server-sent events over fetch (EventSource cannot POST) -----------------------------------

// Yields {event, data} for each event of a text/event-stream body; comments (":" lines) skipped.
async function* sseEvents(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let event = "message";
  let data = [];
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    for (;;) {
      const end = buffer.search(/\r\n|\r|\n/);
      if (end < 0 || (buffer[end] === "\r" && end === buffer.length - 1)) break; // a "\r\n" may be split
      const line = buffer.slice(0, end);
      buffer = buffer.slice(end + (buffer.startsWith("\r\n", end) ? 2 : 1));
      if (line === "") {
        if (data.length) yield { event, data: data.join("\n") };
        event = "message";
        data = [];
      } else if (!line.startsWith(":")) {
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let text = colon < 0 ? "" : line.slice(colon + 1);
        if (text.startsWith(" ")) text = text.slice(1);
        if (field === "event") event = text;
        else if (field === "data") data.push(text);
      }
    }
  }
}

// --- what the server offers: /readyz and the request schema ------------------------------------

function fillSelect(select, options) {
  const keep = select.value;
  select.replaceChildren(...options.map(([value, label]) => new Option(label, value)));
  if (options.some(([value]) => value === keep)) select.value = keep;
}

async function loadStatus() {
  const status = $("server-status");
  let body;
  try {
    const response = await fetch("/readyz");
    body = await response.json();
  } catch (error) {
    status.textContent = `Server unreachable (${error.message}).`;
    status.dataset.state = "unreachable";
    setTimeout(loadStatus, READY_POLL_MS);
    return;
  }
  status.dataset.state = body.status;
  if (body.status !== "ready") {
    status.textContent = `Server ${body.status}${body.error ? `: ${body.error}` : ""}…`;
    setTimeout(loadStatus, READY_POLL_MS);
    if (!body.readers) return;
  } else {
    status.textContent = `Ready · index version ${body.index_version}`;
  }
  const readers = body.readers || [];
  fillSelect($("reader"), [["", `server default (${body.default_reader})`], ...readers.map((r) => [r, r])]);
  const adapters = body.adapters || [];
  fillSelect($("adapter"), [
    ["", `server default (${body.default_adapter || "base model"})`],
    ["none", "none (base model)"],
    ...adapters.filter((a) => a !== "none").map((a) => [a, a]),
  ]);
}

// The request schema of POST /v1/ask in /openapi.json: this server's limits and retrieval modes.
async function loadLimits() {
  let spec;
  try {
    const response = await fetch("/openapi.json");
    if (!response.ok) return;
    spec = await response.json();
  } catch (_) {
    return; // the fields stay without bounds; the server still checks them
  }
  const resolve = (node) => {
    while (node && node.$ref) node = node.$ref.split("/").slice(1).reduce((at, key) => at[key], spec);
    return node || {};
  };
  const operation = ((spec.paths || {})["/v1/ask"] || {}).post || {};
  const content = ((operation.requestBody || {}).content || {})["application/json"] || {};
  const properties = resolve(content.schema).properties || {};
  const topK = properties.top_k || {};
  const input = $("top-k");
  if (topK.minimum !== undefined) input.min = topK.minimum;
  if (topK.maximum !== undefined) input.max = topK.maximum;
  if (topK.default !== undefined && !input.value) input.value = topK.default;
  const question = resolve(properties.question);
  if (question.maxLength) $("question").maxLength = question.maxLength;
  const retrieval = properties.retrieval || {};
  const modes = [retrieval, ...(retrieval.anyOf || [])].map(resolve).flatMap((s) => s.enum || []);
  const help = retrieval.description ? ` ${retrieval.description}` : "";
  fillSelect($("retrieval"), [["", "server default"], ...modes.map((m) => [m, m])]);
  $("retrieval").title = help.trim();
}

// --- asking, with the answer streamed in -------------------------------------------------------

let asking = null; // the AbortController of the question in flight

function askBody() {
  const body = { question: $("question").value, stream: true, extractive: $("extractive").checked };
  for (const [id, key] of [["reader", "reader"], ["retrieval", "retrieval"], ["adapter", "adapter"]]) {
    if ($(id).value) body[key] = $(id).value;
  }
  if ($("top-k").value) body.top_k = Number($("top-k").value);
  return body;
}

function setAnswerState(state) {
  const answer = $("answer");
  answer.dataset.state = state;
  answer.setAttribute("aria-busy", String(state === "streaming"));
  $("ask-button").disabled = state === "streaming";
  $("stop-button").disabled = state !== "streaming";
}

async function ask(event) {
  event.preventDefault();
  if (asking) return;
  const answer = $("answer");
  answer.textContent = "";
  answer.dataset.tokenEvents = "0";
  $("answer-meta").textContent = "";
  renderCitations([], null, null);
  showError($("ask-error"), null);
  setAnswerState("streaming");
  asking = new AbortController();
  try {
    const response = await fetch("/v1/ask", {
      method: "POST",
      headers: authHeaders({ "Content-Type": "application/json", Accept: "text/event-stream" }),
      body: JSON.stringify(askBody()),
      signal: asking.signal,
    });
    if (!response.ok) throw await errorOf(response);
    if ((response.headers.get("Content-Type") || "").startsWith("text/event-stream")) {
      await readStream(response);
    } else {
      showAnswer(await response.json()); // a server that answers at once
    }
  } catch (error) {
    if (error.name === "AbortError") {
      setAnswerState("stopped");
      $("answer-meta").textContent = "Stopped.";
    } else {
      setAnswerState("error");
      showError($("ask-error"), error);
    }
  } finally {
    asking = null;
  }
}

async function readStream(response) {
  const answer = $("answer");
  for await (const { event, data } of sseEvents(response)) {
    const body = JSON.parse(data);
    if (event === "citations") {
      renderCitations(body.citations, null, body.index_version);
    } else if (event === "token") {
      answer.append(document.createTextNode(body.text));
      answer.dataset.tokenEvents = String(Number(answer.dataset.tokenEvents) + 1);
    } else if (event === "done") {
      showAnswer(body);
      return;
    } else if (event === "error") {
      const error = body.error || {};
      throw new ApiError(0, error.code || "error", error.message || "the answer failed");
    }
  }
  throw new ApiError(0, "stream_ended", "the connection ended before the answer was complete");
}

function showAnswer(result) {
  $("answer").textContent = result.answer;
  renderCitations(result.citations, result.evidence, result.index_version);
  const parts = [`reader ${result.reader}`, `adapter ${result.adapter || "none"}`];
  if (result.edit_id) parts.unshift(`answered from edit ${result.edit_id}`);
  if (result.abstained) parts.unshift(`abstained: the passages do not support an answer (support ${result.support.toFixed(2)})`);
  if (result.probability !== null && result.probability !== undefined) {
    parts.push(`p = ${result.probability.toFixed(3)}`);
  }
  if (result.timings_ms && result.timings_ms.total !== undefined) parts.push(`${Math.round(result.timings_ms.total)} ms`);
  $("answer-meta").textContent = parts.join(" · ");
  setAnswerState("done");
}

// Python counts characters in code points, JavaScript strings in UTF-16 units: split by code point.
function splitAt(text, start, end) {
  const points = Array.from(text);
  return [points.slice(0, start), points.slice(start, end), points.slice(end)].map((p) => p.join(""));
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function renderCitations(citations, evidence, indexVersion) {
  $("citations-version").textContent = indexVersion ? `(index version ${indexVersion})` : "";
  $("citations").replaceChildren(
    ...citations.map((c, i) => {
      const item = element("li", "citation");
      item.dataset.docId = c.doc_id;
      item.id = `citation-${i + 1}`;
      const head = element("p", "citation-head");
      head.append(element("span", "title", c.title || c.doc_id), " ", element("code", "doc-id", c.doc_id));
      const meta = c.metadata || {};
      if (meta.page !== undefined && meta.page !== null) head.append(" ", element("span", "page", `page ${meta.page}`));
      head.append(" ", element("span", "score", `score ${c.score.toFixed(3)}`));
      if (c.weight !== null && c.weight !== undefined) head.append(" ", element("span", "weight", `weight ${c.weight.toFixed(2)}`));
      const passage = element("blockquote", "passage");
      if (evidence && evidence.chunk_id === c.chunk_id) {
        const [before, span, after] = splitAt(c.text, evidence.start_char, evidence.end_char);
        const mark = element("mark", "evidence", span);
        mark.title = `characters ${evidence.document_start_char}–${evidence.document_end_char} of the document`;
        passage.append(before, mark, after);
        item.classList.add("cited");
      } else {
        passage.textContent = c.text;
      }
      item.append(head, passage);
      return item;
    }),
  );
}

// --- index versions, the delta, jobs ------------------------------------------------------------

let indexName = null;

function humanBytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i += 1;
  }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

// A table row; its first cell is an id, kept on one line.
function cells(row, values) {
  row.append(...values.map((v) => (v instanceof Node ? wrap("td", v) : element("td", "", String(v)))));
  row.firstChild.className = "id";
  return row;
}

function wrap(tag, child) {
  const node = document.createElement(tag);
  node.append(child);
  return node;
}

// `quiet`: on the first load, a missing token is a note, not an alert.
async function loadIndexes(quiet = false) {
  showError($("manage-error"), null);
  let body;
  try {
    body = await api("GET", "/admin/indexes");
  } catch (error) {
    if (quiet && (error.status === 401 || error.status === 403)) note(`The index needs an admin token: ${error.message}`);
    else showError($("manage-error"), error);
    return;
  }
  note("");
  const index = body.indexes[0];
  indexName = index.name;
  $("index-name").textContent = `${index.name} · store ${index.store}`;
  const summary = [
    ["Serving", index.serving || "none"],
    ["Delta (changes since the serving version)", `${index.delta_chunks} chunks`],
    ["Document changes acknowledged", index.head_seq],
    ["Shards served", index.served_shards.length === 1 && index.served_shards[0] === 0 ? "unsharded" : index.served_shards.join(", ")],
  ];
  $("index-summary").replaceChildren(...summary.flatMap(([k, v]) => [element("dt", "", k), element("dd", "", String(v))]));
  $("versions").tBodies[0].replaceChildren(...index.versions.map((v) => versionRow(v)));
  $("replicas").tBodies[0].replaceChildren(
    ...index.replicas.map((r) =>
      cells(document.createElement("tr"), [
        r.this ? `${r.id} (this one)` : r.id,
        r.version,
        r.state,
        r.delta_seq,
        r.lag_changes ? `${r.lag_changes} changes` : "up to date",
      ]),
    ),
  );
}

function versionRow(v) {
  let action = element("span", "meta", v.serving ? "serving" : "");
  if (!v.serving) {
    action = element("button", "small", "Serve this");
    action.type = "button";
    action.setAttribute("aria-label", `Roll back to version ${v.version}`);
    action.addEventListener("click", () => rollback(v.version));
  }
  const created = new Date(v.created_at);
  const when = Number.isNaN(created.getTime())
    ? v.created_at
    : created.toLocaleString([], { dateStyle: "short", timeStyle: "short" });
  const row = cells(document.createElement("tr"), [v.version, when, v.documents, v.chunks, humanBytes(v.bytes), action]);
  if (v.serving) row.classList.add("serving");
  return row;
}

async function rollback(version) {
  showError($("manage-error"), null);
  let result;
  try {
    result = await api("POST", `/admin/indexes/${encodeURIComponent(indexName)}/rollback`, { json: { version } });
  } catch (error) {
    showError($("manage-error"), error);
    return;
  }
  await Promise.all([loadIndexes(), loadStatus()]);
  note(`Serving ${result.serving} (was ${result.previous}), switched in ${result.seconds.toFixed(2)} s.`);
}

async function refresh() {
  showError($("manage-error"), null);
  if (!indexName) await loadIndexes();
  if (!indexName) return;
  try {
    const created = await api("POST", `/admin/indexes/${encodeURIComponent(indexName)}/refresh`);
    trackJob(created.job_id, "refresh");
  } catch (error) {
    showError($("manage-error"), error);
  }
}

function savedJobs() {
  try {
    return JSON.parse(sessionStorage.getItem(JOBS_KEY) || "[]");
  } catch (_) {
    return [];
  }
}

function trackJob(jobId, label) {
  const jobs = savedJobs().filter((j) => j.job_id !== jobId);
  jobs.unshift({ job_id: jobId, label });
  sessionStorage.setItem(JOBS_KEY, JSON.stringify(jobs.slice(0, 20)));
  followJob(jobId, label);
}

function jobItem(jobId) {
  let item = document.getElementById(`job-${jobId}`);
  if (!item) {
    item = element("li", "job");
    item.id = `job-${jobId}`;
    item.dataset.jobId = jobId;
    $("jobs").prepend(item);
  }
  return item;
}

function describeJob(item, label, job) {
  item.dataset.state = job.state;
  const parts = [`${label}: ${job.state}`];
  if (job.kind === "documents") parts.push(`${job.upserts} upserts, ${job.deletes} deletes`);
  const counts = Object.entries(job.counts || {}).map(([k, v]) => `${k} ${v}`);
  if (counts.length) parts.push(counts.join(", "));
  if (job.index) parts.push(`now serving ${job.index.serving}`);
  const head = element("p", "", parts.join(" · "));
  head.prepend(element("code", "job-id", job.job_id.slice(0, 8)), " ");
  const errors = element("ul", "job-errors");
  errors.append(...Object.entries(job.errors || {}).map(([id, why]) => element("li", "", `${id}: ${why}`)));
  item.replaceChildren(head, ...(errors.childElementCount ? [errors] : []));
}

async function followJob(jobId, label) {
  const item = jobItem(jobId);
  for (;;) {
    let job;
    try {
      job = await api("GET", `/v1/jobs/${jobId}`);
    } catch (error) {
      item.dataset.state = "unknown";
      item.textContent = `${label} ${jobId.slice(0, 8)}: ${error.code}: ${error.message}`;
      return;
    }
    describeJob(item, label, job);
    if (job.state === "done" || job.state === "failed") break;
    await new Promise((resolve) => setTimeout(resolve, JOB_POLL_MS));
  }
  await Promise.all([loadIndexes(), loadStatus()]); // the delta, or the serving version, changed
}

// --- ingesting ---------------------------------------------------------------------------------

async function paste(event) {
  event.preventDefault();
  showError($("manage-error"), null);
  const doc = { id: $("doc-id").value.trim(), title: $("doc-title").value, text: $("doc-text").value };
  try {
    const created = await api("POST", "/v1/documents", { json: { upsert: [doc] } });
    trackJob(created.job_id, `document ${doc.id}`);
    event.target.reset();
  } catch (error) {
    showError($("manage-error"), error);
  }
}

async function upload(event) {
  event.preventDefault();
  showError($("manage-error"), null);
  const files = $("files").files;
  const form = new FormData();
  for (const file of files) form.append("files", file, file.name);
  const result = $("upload-result");
  result.textContent = `Uploading ${files.length} file(s)…`;
  try {
    const created = await api("POST", "/v1/documents/files", { form });
    showSkipped(result, files.length, created);
    trackJob(created.job_id, `upload of ${files.length} file(s)`);
    event.target.reset();
  } catch (error) {
    result.textContent = "";
    showError($("manage-error"), error);
  }
}

// The upload's answer: {job_id, documents, skipped: [{file, reason}]}.
function showSkipped(result, sent, created) {
  const skipped = created.skipped || [];
  const head = element("p", "", `${sent} file(s) sent: ${created.documents} document(s) queued, ${skipped.length} skipped.`);
  const list = element("ul", "skipped");
  list.append(...skipped.map((s) => element("li", "", `${s.file}: ${s.reason}`)));
  result.replaceChildren(head, ...(skipped.length ? [list] : []));
}

// --- the token, and start-up -------------------------------------------------------------------

function showTokenState() {
  $("token-state").textContent = token() ? "A token is set for this tab." : "No token set.";
}

function init() {
  $("token").value = token();
  showTokenState();
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const value = $("token").value.trim();
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    else sessionStorage.removeItem(TOKEN_KEY);
    showTokenState();
    loadIndexes();
  });
  $("token-forget").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    $("token").value = "";
    showTokenState();
  });
  $("ask-form").addEventListener("submit", ask);
  $("question").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("ask-form").requestSubmit();
    }
  });
  $("stop-button").addEventListener("click", () => asking && asking.abort());
  $("indexes-reload").addEventListener("click", () => loadIndexes());
  $("refresh-button").addEventListener("click", refresh);
  $("paste-form").addEventListener("submit", paste);
  $("upload-form").addEventListener("submit", upload);
  loadStatus();
  loadLimits();
  loadIndexes(true);
  for (const job of savedJobs().reverse()) followJob(job.job_id, job.label);
}

document.addEventListener("DOMContentLoaded", init);
