// Data Upload of one table: the S3 keys and path an S3 client needs, the template, checking a
// file without storing it, uploading from the browser, and the table's upload history.

import { api, ApiError, request } from "../lib/api.js";
import { bytes, count, h, mount, when } from "../lib/dom.js";
import { badge, confirmAction, copyButton, describe, download, empty, errorBox, field, form, loading, notify, pager, table } from "../lib/ui.js";

const HISTORY_PAGE = 10;
const ERRORS_PAGE = 50;
const POLL_MS = 1000;
// How long to wait for the importer to list a file the browser put in the store.
const ARRIVAL_POLLS = 180;
const RUNNING = new Set(["pending", "processing"]);
const MASK = "•".repeat(16);

export const routes = [
  { path: "/services/:serviceId/tables/:tableId/upload", title: "Data Upload", render: renderUpload },
];

const tablePath = (tableId) => `/experiment/v1/dcp_datasources/${encodeURIComponent(tableId)}`;

async function renderUpload(params, main, ctx) {
  const { serviceId, tableId } = params;
  const tableHref = `#/services/${encodeURIComponent(serviceId)}/tables/${encodeURIComponent(tableId)}`;
  const theTable = await api.get(tablePath(tableId));
  if (String(theTable.dcp_service_id) !== String(serviceId)) {
    mount(
      main,
      h("h1", {}, "Data Upload"),
      errorBox(new ApiError(404, { message: `Table ${tableId} is not a table of DCP service ${serviceId}.` })),
      h("p", {}, h("a", { href: `#/services/${encodeURIComponent(theTable.dcp_service_id)}/tables/${encodeURIComponent(tableId)}/upload` }, "Open the Data Upload of this table")),
    );
    return undefined;
  }
  const screen = { tableId, base: tablePath(tableId), table: theTable, disposed: false, timers: new Set() };
  const history = historySection(screen);
  mount(
    main,
    h(
      "p",
      { class: "crumbs" },
      h("a", { href: `#/services/${encodeURIComponent(serviceId)}/tables` }, "Attributes"),
      " › ",
      h("a", { href: tableHref }, theTable.name),
      " › Data Upload",
    ),
    h("h1", {}, `Data Upload: ${theTable.name}`),
    theTable.archived
      ? h("p", { class: "state error", role: "alert" }, "This table is archived: files put in its S3 path are not imported.")
      : null,
    connectionPanel(theTable, (ctx.config && ctx.config.s3) || {}),
    h("div", { class: "grid upload-tools" }, templatePanel(screen, tableHref), checkPanel(screen)),
    uploadPanel(screen, history),
    history.element,
  );
  return () => {
    screen.disposed = true;
    for (const timer of screen.timers) clearTimeout(timer);
    screen.timers.clear();
  };
}

/** A timer that is cleared when the route changes. */
function later(screen, action, ms = POLL_MS) {
  if (screen.disposed) return;
  const timer = setTimeout(() => {
    screen.timers.delete(timer);
    if (!screen.disposed) action();
  }, ms);
  screen.timers.add(timer);
}

// ---- 1. Where and how to upload ----------------------------------------------------------

/** Quotes a value for a POSIX shell only when it needs it. */
function shellWord(text) {
  return /^[\w@%+=:,./-]+$/.test(text) ? text : `'${String(text).replace(/'/g, `'\\''`)}'`;
}

function cliCommand(theTable, store, secret) {
  const endpoint = store.endpoint_url ? ` --endpoint-url ${shellWord(store.endpoint_url)}` : "";
  const target = `s3://${store.bucket}/${theTable.s3_path}/customers.csv`;
  return [
    `export AWS_ACCESS_KEY_ID=${shellWord(theTable.aws_access_key)} AWS_SECRET_ACCESS_KEY=${secret} AWS_DEFAULT_REGION=${shellWord(store.region || "us-east-1")}`,
    `aws s3 cp customers.csv ${shellWord(target)}${endpoint}`,
  ].join("\n");
}

/** Where Cyberduck connects: the endpoint's host and port, or AWS itself. */
function cyberduckFacts(store) {
  if (!store.endpoint_url) return { connection: "Amazon S3", server: "s3.amazonaws.com", port: "443" };
  const url = new URL(store.endpoint_url);
  const secure = url.protocol === "https:";
  return {
    connection: secure ? "Amazon S3" : "S3 (HTTP), from Cyberduck's connection profiles",
    server: url.hostname,
    port: url.port || (secure ? "443" : "80"),
  };
}

function kvRow(label, value, copy) {
  return [h("dt", {}, label), h("dd", {}, value, copy || null)];
}

/** The key pair, with the secret shown only on request; `onToggle(shown)` follows it elsewhere. */
function keyRows(theTable, onToggle) {
  const secret = theTable.aws_secret_key || "";
  const secretValue = h("code", { class: "secret" }, MASK);
  const toggle = h("button", { type: "button", class: "copy", "aria-pressed": "false", "aria-label": "Show the AWS secret key" }, "Show");
  let shown = false;
  toggle.addEventListener("click", () => {
    shown = !shown;
    secretValue.textContent = shown ? secret : MASK;
    toggle.textContent = shown ? "Hide" : "Show";
    toggle.setAttribute("aria-pressed", String(shown));
    toggle.setAttribute("aria-label", `${shown ? "Hide" : "Show"} the AWS secret key`);
    onToggle(shown);
  });
  return [
    kvRow("AWS access key", h("code", {}, theTable.aws_access_key), copyButton(theTable.aws_access_key, "AWS access key")),
    kvRow("AWS secret key", [secretValue, toggle], copyButton(secret, "AWS secret key")),
  ];
}

function connectionPanel(theTable, store) {
  const secret = shellWord(theTable.aws_secret_key || "");
  const section = (...children) =>
    h("section", { class: "panel", "aria-labelledby": "upload-connect" }, h("h2", { id: "upload-connect" }, "Connect an S3 client"), children);
  if (!store.bucket) {
    return section(
      h("dl", { class: "kv" }, keyRows(theTable, () => {})),
      h("p", { class: "state error", role: "alert" }, "Where the S3 store is could not be read from this deployment (/console/config.json); reload to try again."),
    );
  }
  const command = h("pre", { class: "command", "aria-label": "AWS CLI command" });
  const paintCommand = (shown) => {
    command.textContent = cliCommand(theTable, store, shown ? secret : "<secret key: Show above>");
  };
  paintCommand(false);
  const importPath = `/${store.bucket}/${theTable.s3_path}`;
  const duck = cyberduckFacts(store);
  return section(
    h("p", { class: "hint" }, "Files dropped into the import path are imported within seconds; each appears in the upload history below."),
    h(
      "dl",
      { class: "kv" },
      keyRows(theTable, paintCommand),
      kvRow("S3 import path", h("code", {}, importPath), copyButton(importPath, "S3 import path")),
      kvRow(
        "S3 endpoint",
        store.endpoint_url ? h("code", {}, store.endpoint_url) : "AWS S3 (its default endpoint)",
        store.endpoint_url ? copyButton(store.endpoint_url, "S3 endpoint") : null,
      ),
      kvRow("Region", h("code", {}, store.region || "us-east-1")),
    ),
    h("h3", {}, "AWS CLI"),
    h("div", { class: "command-box" }, command, copyButton(() => cliCommand(theTable, store, secret), "AWS CLI command")),
    h("h3", {}, "Cyberduck"),
    h("p", { class: "hint" }, "A new bookmark with these facts; the path goes under More Options, and Cyberduck asks for the secret key when it connects."),
    h(
      "dl",
      { class: "kv cyberduck", "aria-label": "Cyberduck bookmark" },
      kvRow("Connection", duck.connection),
      kvRow("Server", h("code", {}, duck.server), copyButton(duck.server, "Cyberduck server")),
      kvRow("Port", h("code", {}, duck.port)),
      kvRow("Access Key ID", h("code", {}, theTable.aws_access_key)),
      kvRow("Path", h("code", {}, importPath), copyButton(importPath, "Cyberduck path")),
    ),
  );
}

// ---- 2. The template -----------------------------------------------------------------------

function locatorText(theTable) {
  if (theTable.is_optimizely || !theTable.keyfield_locator_type) return "the Optimizely user id";
  const kind = String(theTable.keyfield_locator_type).replace(/_/g, " ");
  return theTable.keyfield_locator_name ? `the ${kind} “${theTable.keyfield_locator_name}”` : `the ${kind}`;
}

function templatePanel(screen, tableHref) {
  const active = (screen.table.attributes || []).filter((attribute) => !attribute.archived);
  const message = h("p", { class: "form-error", role: "alert" });
  const button = h("button", { type: "button", class: "primary" }, "Download template CSV");
  button.addEventListener("click", async () => {
    message.textContent = "";
    button.disabled = true;
    try {
      download(`${screen.table.name}-template.csv`, await api.text(`${screen.base}/template`));
    } catch (error) {
      message.textContent = describe(error);
    } finally {
      button.disabled = false;
    }
  });
  return h(
    "section",
    { class: "panel", "aria-labelledby": "upload-template" },
    h("h2", { id: "upload-template" }, "The file"),
    h(
      "p",
      {},
      "A CSV (or TSV) file whose header has a ",
      h("code", {}, "customerId"),
      ` column, holding ${locatorText(screen.table)}, and any of the table's attribute names. An empty cell leaves a value unchanged; the header is row 1.`,
    ),
    active.length
      ? h("p", {}, button)
      : empty("This table has no attributes yet: add them first, then download the template.", h("a", { href: tableHref }, "Add attributes")),
    message,
  );
}

// ---- 3. Checking a file without storing it ---------------------------------------------------

/** An API refusal put the way a person acts on it. */
function readable(error) {
  if (!(error instanceof ApiError)) return error;
  let message = null;
  if (error.code === "CHECK_IN_PROGRESS") message = "Another file of this account is being checked right now; try again once it is done.";
  else if (error.code === "CHECK_TOO_LONG") message = "This file takes too long to check here; upload it instead: its history reports every row.";
  else if (error.status === 413) message = "This file is too large to check here; upload it instead: its history reports every row.";
  if (!message) return error;
  const better = new ApiError(error.status, { message, code: error.code, errors: error.errors });
  better.retryAfter = error.retryAfter;
  return better;
}

function chosenFile(values, name) {
  const file = values[name] && values[name][0];
  if (!file) throw new ApiError(400, { message: "Choose a file first.", errors: [{ field: name, message: "Choose a file." }] });
  return file;
}

/** Pages through a list already in memory, with the console's pager. */
function localPages(items, size = ERRORS_PAGE) {
  return async (path) => {
    const start = Number(path || 0);
    const next = start + size < items.length ? String(start + size) : null;
    return { items: items.slice(start, start + size), next };
  };
}

const ERROR_COLUMNS = [
  ["Row", (problem) => count(problem.row)],
  ["Column", (problem) => problem.column || ""],
  ["Value", (problem) => h("code", {}, problem.value ?? "")],
  ["Message", (problem) => problem.message],
];

function rowErrorsTable(problems, caption) {
  return pager({
    fetchPage: localPages(problems),
    render: (items) => table(ERROR_COLUMNS, items, { caption }),
    emptyMessage: "No row was refused.",
  });
}

function checkReport(file, report) {
  return h(
    "div",
    { class: "check-report", role: "region", "aria-label": `Check of ${file.name}` },
    h("h3", {}, `Check of ${file.name} `, badge(report.status)),
    h("p", { class: "hint" }, "Nothing was stored: upload the file to import it."),
    h(
      "dl",
      { class: "kv" },
      kvRow("Rows", count(report.rows_total)),
      kvRow("Rows ok", count(report.rows_ok)),
      kvRow("Rows failed", count(report.rows_failed)),
      report.error ? kvRow("File error", h("span", { class: "file-error" }, report.error)) : null,
    ),
    (report.errors || []).length ? rowErrorsTable(report.errors, "Row errors") : null,
  );
}

function checkPanel(screen) {
  const result = h("div", { "aria-live": "polite" });
  const checker = form({
    label: "Check a file",
    submit: "Check file",
    aliases: { file_name: "file" },
    fields: [field({ label: "File to check", name: "file", type: "file", accept: ".csv,.tsv,.tab,.gz,text/csv,text/tab-separated-values" })],
    async onSubmit(values) {
      const file = chosenFile(values, "file");
      mount(result, loading(`Checking ${file.name}`));
      try {
        const response = await request("POST", `${screen.base}/validate`, { body: file, query: { file_name: file.name } });
        mount(result, checkReport(file, await response.json()));
      } catch (error) {
        result.replaceChildren();
        throw readable(error);
      }
    },
  });
  return h(
    "section",
    { class: "panel", "aria-labelledby": "upload-check" },
    h("h2", { id: "upload-check" }, "Check a file"),
    h("p", { class: "hint" }, "Reads the file the way an import does and reports every bad row, without storing anything."),
    checker,
    result,
  );
}

// ---- 4. Uploading from the browser -----------------------------------------------------------

/** S3 answers errors in XML: its Code and Message are what a person can act on. */
function storeRefusal(xhr) {
  const text = xhr.responseText || "";
  const code = (text.match(/<Code>([^<]*)<\/Code>/) || [])[1];
  const said = (text.match(/<Message>([^<]*)<\/Message>/) || [])[1];
  const detail = [code, said].filter(Boolean).join(": ");
  return `The S3 store refused the file (HTTP ${xhr.status}${detail ? `, ${detail}` : ""}).`;
}

/** PUTs the file to a presigned URL, reporting progress; resolves when the store has it. */
function putFile(url, file, onProgress, onStart) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("PUT", url);
    xhr.upload.onprogress = (event) => {
      if (event.lengthComputable) onProgress(event.loaded, event.total);
    };
    xhr.onload = () => {
      if (xhr.status >= 200 && xhr.status < 300) resolve();
      else reject(new ApiError(xhr.status, { message: storeRefusal(xhr) }));
    };
    xhr.onerror = () =>
      reject(new ApiError(0, { message: "The S3 store could not be reached from this browser: the network failed, or the store's CORS rules do not let this page PUT files (see “Bulk upload” in the README). Try again, or use an S3 client." }));
    xhr.onabort = () => reject(new ApiError(0, { message: "The upload was stopped; nothing was stored." }));
    xhr.send(file);
    onStart(xhr);
  });
}

function uploadPanel(screen, history) {
  const progress = h("progress", { max: "100", value: "0", "aria-label": "Upload progress" });
  const progressText = h("span", { class: "progress-text" });
  const stop = h("button", { type: "button" }, "Stop upload");
  const progressBox = h("div", { class: "upload-progress", hidden: true }, progress, progressText, stop);
  const status = h("p", { class: "hint", role: "status" });
  let transfer = null;
  stop.addEventListener("click", () => transfer && transfer.abort());

  function showProgress(file, loaded, total) {
    const percent = total ? Math.floor((loaded / total) * 100) : 0;
    progress.value = percent;
    progressText.textContent = `Uploading ${file.name}: ${percent}% (${bytes(loaded)} of ${bytes(total)})`;
  }

  const uploader = form({
    label: "Upload a file",
    submit: "Upload",
    aliases: { file_name: "file" },
    fields: [field({ label: "File to upload", name: "file", type: "file", accept: ".csv,.tsv,.tab,.gz,text/csv,text/tab-separated-values" })],
    async onSubmit(values, element) {
      const file = chosenFile(values, "file");
      status.textContent = "";
      const newest = await api.page(`${screen.base}/uploads`, { per_page: 1 });
      const before = newest.items.length ? newest.items[0].id : 0;
      const target = await api.post(`${screen.base}/uploads`, { file_name: file.name });
      if (!target || !target.url || (target.method && target.method !== "PUT")) {
        throw new ApiError(0, { message: "The platform did not answer with an upload address; try again." });
      }
      progressBox.hidden = false;
      stop.hidden = false;
      showProgress(file, 0, file.size);
      try {
        await putFile(target.url, file, (loaded, total) => showProgress(file, loaded, total), (xhr) => { transfer = xhr; });
      } catch (error) {
        progressText.textContent = `${file.name} was not uploaded.`;
        throw error;
      } finally {
        transfer = null;
        stop.hidden = true;
      }
      showProgress(file, file.size, file.size);
      element.reset();
      notify(`${file.name} is in the store; it is imported next.`);
      status.textContent = `Waiting for the importer to pick up ${file.name}…`;
      history.awaitArrival(target.s3_key, before, (found) => {
        status.textContent = found
          ? `${file.name} is in the upload history (upload ${found.id}).`
          : `${file.name} is not in the upload history yet; use Refresh below in a moment.`;
      });
    },
  });
  return h(
    "section",
    { class: "panel", "aria-labelledby": "upload-put" },
    h("h2", { id: "upload-put" }, "Upload a file"),
    h("p", { class: "hint" }, "Sends the file from this browser straight to the table's S3 import path, as an S3 client would."),
    uploader,
    progressBox,
    status,
  );
}

// ---- 5. The upload history -------------------------------------------------------------------

/** "3.2 of 14.3 MB read": both figures in the unit that suits the file's size. */
function bytesRead(read, size) {
  const units = ["B", "KB", "MB", "GB", "TB"];
  let unit = 0;
  while (unit < units.length - 1 && size >= 1024 ** (unit + 1)) unit += 1;
  const shown = (n) => (unit === 0 ? String(n) : (n / 1024 ** unit).toFixed(1));
  return `${shown(read)} of ${shown(size)} ${units[unit]} read`;
}

/** Total, ok and failed rows; each figure stays on one line, the three may wrap apart. While the
 * file is read, how much of it has been, below them. */
function rowFigures(upload) {
  const processing = upload.status === "processing";
  const soFar = processing ? " so far" : "";
  const figures = [
    h("span", { class: "figure" }, `${count(upload.rows_total)} total`),
    " · ",
    h("span", { class: "figure" }, `${count(upload.rows_ok)} ok`),
    " · ",
    h("span", { class: "figure" }, `${count(upload.rows_failed)} failed${soFar}`),
  ];
  if (processing && typeof upload.bytes_read === "number" && upload.size_bytes > 0) {
    figures.push(h("br"), h("small", { class: "hint bytes-read" }, bytesRead(upload.bytes_read, upload.size_bytes)));
  }
  return figures;
}

/** The cells of one upload's row that change while it runs, updated in place by the poll. */
function uploadRow(upload, actions) {
  const cells = {
    status: h("td", { "data-label": "Status" }),
    rows: h("td", { "data-label": "Rows", class: "rows" }),
    finished: h("td", { "data-label": "Finished", class: "moment" }),
    error: h("td", { "data-label": "Error", class: "file-error" }),
    actions: h("td", { "data-label": "Actions", class: "upload-actions" }),
  };
  const row = h(
    "tr",
    { dataset: { uploadId: String(upload.id) } },
    h("td", { "data-label": "File" }, h("span", { class: "file-name" }, upload.file_name), h("br"), h("small", { class: "hint" }, `upload ${upload.id} · ${bytes(upload.size_bytes)}`)),
    cells.status,
    cells.rows,
    h("td", { "data-label": "Received", class: "moment" }, when(upload.received_at)),
    cells.finished,
    cells.error,
    cells.actions,
  );
  let last = null;
  function update(next) {
    const signature = JSON.stringify([next.status, next.rows_total, next.rows_ok, next.rows_failed, next.bytes_read, next.finished_at, next.error]);
    if (signature === last) return;
    last = signature;
    row.dataset.status = next.status;
    mount(cells.status, badge(next.status));
    mount(cells.rows, rowFigures(next));
    cells.finished.textContent = when(next.finished_at);
    cells.error.textContent = next.error || "";
    // Rebuilding the actions only when the state changes keeps a focused button focused.
    const wanted = `${RUNNING.has(next.status)}:${next.rows_failed > 0}`;
    if (cells.actions.dataset.state !== wanted) {
      cells.actions.dataset.state = wanted;
      mount(cells.actions, actions(next));
    }
  }
  update(upload);
  return { row, update };
}

function historySection(screen) {
  const element = h("section", { class: "panel", "aria-labelledby": "upload-history" });
  const errorsArea = h("div", { class: "row-errors-area" });
  const liveNote = h("p", { class: "hint live-note", role: "status" });
  const state = { path: null, rows: new Map(), list: null, polling: false, pages: null };

  function actions(upload) {
    const label = `${upload.file_name} (upload ${upload.id})`;
    return [
      upload.rows_failed > 0
        ? h("button", { type: "button", "aria-label": `Row errors of ${label}`, onclick: () => showRowErrors(screen, upload, errorsArea) }, "Row errors")
        : null,
      RUNNING.has(upload.status)
        ? h("button", { type: "button", class: "danger", "aria-label": `Cancel import of ${label}`, onclick: () => cancel(upload) }, "Cancel import")
        : null,
    ];
  }

  async function cancel(upload) {
    const sure = await confirmAction(`Stop importing ${upload.file_name}? No row of it will be stored.`, "Stop the import");
    if (!sure) return;
    try {
      patch([await api.post(`${screen.base}/uploads/${upload.id}/cancel`)]);
      notify(`The import of ${upload.file_name} is being cancelled.`);
    } catch (error) {
      notify(describe(error), "error");
    }
    // One more look, whatever the answer: a running import stops within seconds of it.
    keepPolling();
  }

  function renderPage(items) {
    state.rows = new Map();
    const rows = items.map((upload) => {
      const made = uploadRow(upload, actions);
      state.rows.set(upload.id, made);
      return made.row;
    });
    state.list = h("tbody", {}, rows);
    schedule(items);
    return h(
      "div",
      { class: "table-wrap" },
      h(
        "table",
        { class: "upload-history" },
        h("caption", { class: "offscreen" }, "Uploads of this table, newest first"),
        h("thead", {}, h("tr", {}, ["File", "Status", "Rows", "Received", "Finished", "Error", "Actions"].map((name) => h("th", { scope: "col" }, name)))),
        state.list,
      ),
    );
  }

  function patch(items) {
    for (const upload of items) {
      const shown = state.rows.get(upload.id);
      if (shown) shown.update(upload);
    }
  }

  function keepPolling() {
    if (state.polling) return;
    state.polling = true;
    later(screen, poll);
  }

  function schedule(items) {
    const running = items.some((upload) => RUNNING.has(upload.status));
    liveNote.textContent = running ? "Live: refreshed every second while an upload is running." : "";
    if (running) keepPolling();
  }

  async function poll() {
    state.polling = false;
    if (screen.disposed) return;
    let page;
    try {
      page = await fetchPage(state.path);
    } catch (error) {
      liveNote.textContent = `Live updates paused: ${describe(error)}`;
      state.polling = true;
      later(screen, poll, POLL_MS * 5);
      return;
    }
    if (screen.disposed) return;
    const same = page.items.length === state.rows.size && page.items.every((upload) => state.rows.has(upload.id));
    if (same || !state.list) {
      patch(page.items);
      schedule(page.items);
      return;
    }
    // A new upload on the shown page: its rows are drawn anew (rare; other polls edit rows in place).
    const shownList = state.list;
    const redrawn = renderPage(page.items).querySelector("tbody");
    shownList.replaceWith(redrawn);
  }

  function fetchPage(path) {
    return path ? api.page(path) : api.page(`${screen.base}/uploads`, { per_page: HISTORY_PAGE });
  }

  function showFirstPage() {
    state.rows = new Map();
    const list = pager({
      fetchPage: (path) => {
        state.path = path;
        return fetchPage(path);
      },
      render: renderPage,
      emptyMessage: "No upload yet: upload a file above, or drop one into the S3 import path with an S3 client.",
      what: "Loading the upload history",
    });
    if (state.pages) state.pages.replaceWith(list);
    state.pages = list;
    return list;
  }

  /** After a browser upload: polls until the importer has listed the file, then shows the newest page. */
  function awaitArrival(key, newerThan, done, polls = 0) {
    later(screen, async () => {
      let found = null;
      try {
        const page = await api.page(`${screen.base}/uploads`, { per_page: HISTORY_PAGE });
        found = page.items.find((upload) => upload.id > newerThan && upload.s3_key === key) || null;
      } catch (error) {
        found = null;
      }
      if (screen.disposed) return;
      if (found) {
        showFirstPage();
        done(found);
      } else if (polls + 1 >= ARRIVAL_POLLS) {
        done(null);
      } else {
        awaitArrival(key, newerThan, done, polls + 1);
      }
    }, polls === 0 ? 200 : POLL_MS);
  }

  mount(
    element,
    h(
      "div",
      { class: "toolbar" },
      h("h2", { id: "upload-history", class: "grow toolbar-title" }, "Upload history"),
      h("button", { type: "button", onclick: () => showFirstPage() }, "Refresh"),
    ),
    liveNote,
    showFirstPage(),
    errorsArea,
  );
  return { element, awaitArrival };
}

// ---- Row errors of one upload ----------------------------------------------------------------

function keptText(report) {
  const failed = report.rows_failed === 1 ? "1 failed row" : `${count(report.rows_failed)} failed rows`;
  if (report.errors_kept >= report.rows_failed) return `${failed}, all listed below.`;
  return `${failed}; the first ${count(report.errors_kept)} are kept and listed below (DCP_IMPORT_MAX_ERRORS).`;
}

function showRowErrors(screen, upload, area) {
  const heading = h("h3", { tabindex: "-1", class: "toolbar-title" }, `Row errors of ${upload.file_name} (upload ${upload.id})`);
  const message = h("p", { class: "form-error", role: "alert" });
  const save = h("button", { type: "button" }, "Download error report (CSV)");
  save.addEventListener("click", async () => {
    message.textContent = "";
    save.disabled = true;
    try {
      download(`upload-${upload.id}-errors.csv`, await api.text(`${screen.base}/uploads/${upload.id}/errors`, { format: "csv" }));
    } catch (error) {
      message.textContent = describe(error);
    } finally {
      save.disabled = false;
    }
  });
  const body = h("div", {}, loading("Loading the row errors"));
  mount(
    area,
    h(
      "div",
      { class: "row-errors", role: "region", "aria-label": `Row errors of ${upload.file_name}` },
      h("div", { class: "toolbar" }, heading, h("span", { class: "grow" }), save, h("button", { type: "button", onclick: () => area.replaceChildren() }, "Close")),
      message,
      body,
    ),
  );
  heading.focus();
  heading.scrollIntoView({ block: "nearest" });
  api
    .get(`${screen.base}/uploads/${upload.id}/errors`)
    .then((report) => {
      mount(body, h("p", {}, keptText(report)), rowErrorsTable(report.errors || []));
    })
    .catch((error) => mount(body, errorBox(error, () => showRowErrors(screen, upload, area))));
}
