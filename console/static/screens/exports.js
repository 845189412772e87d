// Exports: a table's profiles or an audience's members written to the store as CSV or JSON
// Lines; each one is watched until it is done, then downloaded through its presigned link.

import { api } from "../lib/api.js";
import { bytes, count, h, mount, when } from "../lib/dom.js";
import { badge, describe, empty, field, form, notify, pager, table } from "../lib/ui.js";
import { linkedProjects, serviceTables } from "./audiences.js";

const V1 = "/experiment/v1";
const POLL_MS = 1000;
const FORMATS = [
  { value: "csv", label: "CSV" },
  { value: "jsonl", label: "JSON Lines" },
];
const FINAL = new Set(["done", "failed"]);

function exportPath(item) {
  return item.audience_id
    ? `${V1}/audiences/${item.audience_id}/exports/${item.id}`
    : `${V1}/dcp_datasources/${item.dcp_datasource_id}/exports/${item.id}`;
}

function fileName(item) {
  return (item.key || `export-${item.id}`).split("/").pop();
}

/**
 * Polls each running export once a second, however many places show it, and tells each of
 * them every new reading until the export is done or failed.
 */
function exportWatcher() {
  const watched = new Map();
  let stopped = false;

  async function poll(id) {
    const entry = watched.get(id);
    if (!entry || stopped) return;
    let delay = POLL_MS;
    try {
      entry.item = await api.get(exportPath(entry.item));
      entry.error = null;
    } catch (error) {
      entry.error = error;
      // A refusal will not change by asking again; an outage may.
      if (error.status >= 400 && error.status < 500) {
        watched.delete(id);
        for (const listener of entry.listeners) listener(entry.item, error);
        return;
      }
      delay = POLL_MS * 3;
    }
    if (stopped) return;
    for (const listener of [...entry.listeners]) listener(entry.item, entry.error);
    if (FINAL.has(entry.item.status)) {
      watched.delete(id);
      for (const done of entry.onFinal) done(entry.item);
      return;
    }
    entry.timer = setTimeout(() => poll(id), delay);
  }

  return {
    /** Calls `listener(item, error)` at each reading of a running export; `onFinal(item)` once it ends. */
    watch(item, listener, onFinal) {
      if (stopped || FINAL.has(item.status)) return;
      let entry = watched.get(item.id);
      if (!entry) {
        entry = { item, listeners: new Set(), onFinal: new Set(), timer: null, error: null };
        watched.set(item.id, entry);
        entry.timer = setTimeout(() => poll(item.id), POLL_MS);
      }
      entry.listeners.add(listener);
      if (onFinal) entry.onFinal.add(onFinal);
    },
    stop() {
      stopped = true;
      for (const entry of watched.values()) clearTimeout(entry.timer);
      watched.clear();
    },
  };
}

/** The file's link; `short` shows only "Download" (the name is still in what it is called). */
function downloadLink(item, short) {
  if (item.status !== "done" || !item.download_url) return null;
  const name = fileName(item);
  // The store answers with Content-Disposition: attachment, so the link saves the file even
  // though it is on another origin (where `download` alone would be ignored).
  return h(
    "a",
    { href: item.download_url, download: name, class: "button" },
    "Download ",
    h("span", { class: short ? "offscreen" : "mono" }, name),
  );
}

function statusOf(item, error) {
  return h(
    "span",
    { class: "export-status" },
    badge(item.status),
    item.error ? h("span", { class: "field-error" }, item.error) : null,
    error ? h("span", { class: "hint" }, ` ${describe(error)}`) : null,
  );
}

function sourceNamer(tables, audiences) {
  return (item) => {
    if (item.audience_id) {
      const audience = audiences.find((a) => String(a.id) === String(item.audience_id));
      return audience ? `Audience: ${audience.name}` : `Audience ${item.audience_id}`;
    }
    const found = tables.find((t) => String(t.id) === String(item.dcp_datasource_id));
    return found ? `Table: ${found.name}` : `Table ${item.dcp_datasource_id}`;
  };
}

function formatName(value) {
  const found = FORMATS.find((item) => item.value === value);
  return found ? found.label : value;
}

/** The card of an export started here: status, rows and size as it runs, then its file. */
function exportCard(item, sourceName, watcher, onFinal) {
  const card = h("section", { class: "panel export-card", "aria-label": `Export ${item.id}` });
  function show(current, error) {
    mount(
      card,
      h("h3", {}, `Export ${current.id}: ${sourceName(current)}`),
      h(
        "dl",
        { class: "kv" },
        h("dt", {}, "Status"),
        h("dd", {}, statusOf(current, error)),
        h("dt", {}, "Format"),
        h("dd", {}, formatName(current.format)),
        h("dt", {}, "Rows"),
        h("dd", {}, count(current.row_count)),
        h("dt", {}, "Size"),
        h("dd", {}, bytes(current.size_bytes)),
        h("dt", {}, "Started"),
        h("dd", {}, when(current.created)),
        h("dt", {}, "Finished"),
        h("dd", {}, when(current.finished) || "not yet"),
      ),
      downloadLink(current),
    );
  }
  show(item, null);
  watcher.watch(item, show, onFinal);
  return card;
}

function startForm({ label, submit, choiceLabel, choices, start }) {
  return form({
    label,
    submit,
    fields: [
      field({ label: choiceLabel, name: "source", type: "select", options: choices, required: true }),
      field({ label: "Format", name: "format", type: "select", options: FORMATS, value: "csv" }),
    ],
    // The source is in the path; an error about it belongs next to its picker.
    aliases: { table_id: "source", audience_id: "source" },
    onSubmit: (values) => start(values.source, values.format),
  });
}

function pastExports(serviceId, sourceName, watcher) {
  const columns = [
    ["Export", (item) => String(item.id)],
    ["Source", (item) => sourceName(item)],
    ["Format", (item) => formatName(item.format)],
    ["Status", (item) => badge(item.status)],
    ["Rows", (item) => count(item.row_count)],
    ["Size", (item) => bytes(item.size_bytes)],
    ["Started", (item) => when(item.created)],
    ["Finished", (item) => when(item.finished)],
    ["File", (item) => downloadLink(item, true) || (item.error ? h("span", { class: "export-error" }, item.error) : "")],
  ];
  const rowProps = (item) => ({ dataset: { exportId: String(item.id) } });
  const row = (item) => h("tr", rowProps(item), columns.map(([label, cell]) => h("td", { "data-label": label }, cell(item))));
  let perPage = 20;
  const holder = h("div", {});

  function showPage(items) {
    const built = table(columns, items, { rowProps });
    for (const item of items) {
      // A running export's row follows it in place.
      watcher.watch(item, (current) => {
        const old = built.querySelector(`tr[data-export-id="${current.id}"]`);
        if (old) old.replaceWith(row(current));
      });
    }
    return built;
  }

  let list = null;
  function build() {
    list = pager({
      fetchPage: (path) => (path ? api.page(path) : api.page(`${V1}/dcp_services/${serviceId}/exports`, { per_page: perPage })),
      render: showPage,
      emptyMessage: "No exports yet: start one above.",
      what: "Loading the exports",
    });
    mount(holder, list);
  }
  const size = field({ label: "Per page", name: "per_page", type: "select", value: String(perPage), options: ["10", "20", "50", "100"] });
  size.querySelector("select").addEventListener("change", (event) => {
    perPage = Number(event.target.value);
    build();
  });
  build();
  return {
    element: h("section", { class: "panel past-exports", "aria-label": "Past exports" }, h("div", { class: "toolbar panel-head" }, h("h2", { class: "grow" }, "Past exports"), size),
      h("p", { class: "hint intro" }, "Newest first. Each export still running is followed here until it ends."),
      holder,
    ),
    refresh: () => list.refresh(),
  };
}

async function loadSources(serviceId) {
  const [tables, projects] = await Promise.all([serviceTables(serviceId), linkedProjects(serviceId)]);
  const perProject = await Promise.all(
    projects.map(async (project) => (await api.get(`${V1}/projects/${project.id}/audiences`)).map((audience) => ({ ...audience, project }))),
  );
  return { tables, audiences: perProject.flat() };
}

async function renderExports({ serviceId }, main) {
  const { tables, audiences } = await loadSources(serviceId);
  const watcher = exportWatcher();
  const sourceName = sourceNamer(tables, audiences);
  const started = h("div", { class: "export-cards", "aria-live": "polite" });
  const past = pastExports(serviceId, sourceName, watcher);

  async function start(path, format) {
    const item = await api.post(path, { format });
    notify(`Export ${item.id} started`);
    started.prepend(exportCard(item, sourceName, watcher, () => past.refresh()));
    past.refresh();
  }

  const activeTables = tables.filter((t) => !t.archived);
  const activeAudiences = audiences.filter((a) => !a.archived);
  const tableForm = startForm({
    label: "Export a table",
    submit: "Export table",
    choiceLabel: "Table",
    choices: activeTables.map((t) => ({ value: t.id, label: t.name })),
    start: (id, format) => start(`${V1}/dcp_datasources/${id}/exports`, format),
  });
  const audienceForm = activeAudiences.length
    ? startForm({
        label: "Export an audience",
        submit: "Export audience",
        choiceLabel: "Audience",
        choices: activeAudiences.map((a) => ({ value: a.id, label: `${a.name} (project ${a.project.project_name})` })),
        start: (id, format) => start(`${V1}/audiences/${id}/exports`, format),
      })
    : empty(
        "No audience to export yet: build one first.",
        h("a", { href: `#/services/${serviceId}/audiences` }, "Go to Audiences"),
      );

  mount(
    main,
    h("h1", {}, "Exports"),
    h(
      "p",
      { class: "hint intro" },
      "A table's export holds its customers' values; an audience's holds each member's values in every table. CSV re-imports unchanged; JSON Lines keeps empty strings. Download links last an hour.",
    ),
    h(
      "div",
      { class: "grid" },
      h("section", { class: "panel", "aria-label": "Export a table" }, h("h2", {}, "Export a table"), tableForm),
      h("section", { class: "panel", "aria-label": "Export an audience" }, h("h2", {}, "Export an audience"), audienceForm),
    ),
    started,
    past.element,
  );
  return () => watcher.stop();
}

export const routes = [{ path: "/services/:serviceId/exports", title: "Exports", render: renderExports }];
