// The home screen (the account's DCP services) and one DCP service's settings: its name, its
// guards, the projects linked to it, and archiving it.

import { api, ApiError } from "../lib/api.js";
import { h, mount, uid, when } from "../lib/dom.js";
import { badge, confirmAction, copyButton, describe, empty, field, form, notify, table } from "../lib/ui.js";

export const V1 = "/experiment/v1";

export const routes = [
  { path: "/", title: "DCP services", render: renderHome },
  { path: "/services/:serviceId", title: "DCP service", render: renderService },
];

/**
 * Renders a screen from freshly loaded data, again on each `refresh()`, until the route changes
 * (then the returned `stop` keeps a late answer from drawing over the next screen).
 */
export function liveScreen(main, load, render) {
  const current = stillShown();
  let alive = true;
  async function refresh() {
    const data = await load();
    if (!alive || !current()) return;
    mount(main, render(data, refreshQuietly));
    // A form opened by a button takes the focus, so keyboard users land where they meant to go.
    const target = main.querySelector("[data-autofocus]");
    if (target) target.focus();
  }
  async function refreshQuietly() {
    try {
      await refresh();
    } catch (error) {
      notify(describe(error), "error");
    }
  }
  return { refresh, stop: () => { alive = false; } };
}

/**
 * Whether the route a screen was rendered for is still the one shown. The router sets a screen's
 * cleanup only once its render resolves, so a slow first load must check for itself that people
 * have not moved on meanwhile.
 */
export function stillShown() {
  const hash = window.location.hash;
  return () => window.location.hash === hash;
}

/** Where a screen sits: links back to the service list and the service's screens. */
export function crumbs(...links) {
  return h(
    "nav",
    { class: "crumbs", "aria-label": "Breadcrumb" },
    [["#/", "DCP services"], ...links].flatMap(([href, label], index) => [index ? " › " : null, h("a", { href }, label)]),
  );
}

export function serviceLink(service) {
  return [`#/services/${service.id}`, service.name];
}

/** The heading of a screen, with badges after the title. */
export function heading(title, ...badges) {
  return h("h1", {}, title, badges.filter(Boolean).map((item) => [" ", item]));
}

/** A panel titled by its heading, so that people (and tests) find it as a named region. */
export function panel(title, ...children) {
  const id = uid("panel");
  return h("section", { class: "panel", "aria-labelledby": id }, h("h2", { id }, title), children);
}

/** A button for an action that is not a form's; `label` names it for people who cannot see its row. */
export function button(text, onclick, { label, kind } = {}) {
  return h("button", { type: "button", class: kind, "aria-label": label, onclick }, text);
}

/** An input problem found before asking the API, shown next to its field like the API's own. */
export function fieldProblem(name, message) {
  return new ApiError(400, { message: `${name}: ${message}`, errors: [{ field: name, message }] });
}

/** The message line of a panel, for actions that are buttons rather than forms. */
export function statusLine() {
  return h("p", { class: "form-error", role: "alert" });
}

export async function runAction(line, action) {
  line.textContent = "";
  try {
    await action();
  } catch (error) {
    line.textContent = describe(error);
  }
}

// Home

async function renderHome(params, main, ctx) {
  const screen = liveScreen(main, () => api.get(`${V1}/dcp_services`), (services) => home(services, ctx));
  await screen.refresh();
  return screen.stop;
}

function home(services, ctx) {
  const limitNote = h("div", { class: "limit-note" });
  const create = form({
    label: "Create a DCP service",
    submit: "Create DCP service",
    fields: [
      field({
        label: "Name",
        name: "name",
        required: true,
        hint: "For people; it can be changed later. A DCP service holds your tables, their attributes and the customer profiles.",
      }),
    ],
    async onSubmit(values) {
      mount(limitNote);
      let created;
      try {
        created = await api.post(`${V1}/dcp_services`, { name: values.name.trim() });
      } catch (error) {
        if (error instanceof ApiError && error.code === "SERVICE_LIMIT_REACHED") mount(limitNote, limitHelp(services));
        throw error;
      }
      notify(`DCP service “${created.name}” created.`);
      ctx.navigate(`/services/${created.id}`);
    },
  });
  if (!services.length) {
    return [
      heading("DCP services"),
      h(
        "section",
        { class: "panel", "aria-labelledby": "first-service" },
        h("h2", { id: "first-service" }, "Create your DCP service first"),
        h(
          "p",
          {},
          "This account has no DCP service yet. Create one; then add tables and their attributes in its Attributes dashboard, link your projects to it, and upload data.",
        ),
        create,
        limitNote,
      ),
    ];
  }
  const ordered = [...services].sort((a, b) => Number(a.archived) - Number(b.archived) || a.id - b.id);
  return [
    heading("DCP services"),
    panel(
      "Your DCP services",
      h("p", {}, "Open one to manage its tables and attributes, or its settings."),
      table(
      [
        ["Name", (s) => h("a", { href: `#/services/${s.id}` }, s.name)],
        ["Status", (s) => badge(s.archived ? "archived" : "active")],
        ["S3 path", (s) => h("code", {}, s.s3_path)],
        ["Created", (s) => when(s.created)],
        [
          "Open",
          (s) =>
            h(
              "span",
              { class: "row-actions" },
              h("a", { href: `#/services/${s.id}/tables`, "aria-label": `Attributes of ${s.name}` }, "Attributes"),
              h("a", { href: `#/services/${s.id}`, "aria-label": `Settings of ${s.name}` }, "Settings"),
            ),
        ],
      ],
        ordered,
        { rowProps: (s) => ({ class: s.archived ? "archived" : null }) },
      ),
    ),
    panel("Create a DCP service", create, limitNote),
  ];
}

function limitHelp(services) {
  const active = services.filter((s) => !s.archived);
  return h(
    "div",
    { class: "state error" },
    h("p", {}, "This account already has as many active DCP services as it may have. Archive one in its settings before creating another."),
    active.length
      ? h("p", {}, active.map((s) => [h("a", { href: `#/services/${s.id}` }, `Settings of “${s.name}”`), " "]))
      : null,
  );
}

// One service's settings

async function renderService({ serviceId }, main, ctx) {
  const screen = liveScreen(
    main,
    () => Promise.all([api.get(`${V1}/dcp_services/${encodeURIComponent(serviceId)}`), api.get(`${V1}/projects`)]),
    ([service, projects], refresh) => serviceScreen(service, projects, ctx, refresh),
  );
  await screen.refresh();
  return screen.stop;
}

function serviceScreen(service, projects, ctx, refresh) {
  const title = heading(service.name, service.archived ? badge("archived") : null);
  const sections = [crumbs(), title];
  if (service.archived) {
    sections.push(
      h(
        "p",
        { class: "state empty", role: "status" },
        "This DCP service is archived: it takes no more data, and its name, guards and tables can no longer change.",
      ),
    );
  }
  sections.push(details(service, ctx));
  if (!service.archived) sections.push(renameForm(service, refresh), guardsForm(service, refresh));
  sections.push(projectsPanel(service, projects, refresh));
  if (!service.archived) sections.push(archivePanel(service, refresh));
  return sections;
}

function details(service, ctx) {
  const bucket = ctx.config && ctx.config.s3 && ctx.config.s3.bucket;
  const base = `#/services/${service.id}`;
  return panel(
    "Details",
    h(
      "dl",
      { class: "kv" },
      h("dt", {}, "DCP service id"),
      h("dd", {}, String(service.id)),
      h("dt", {}, "S3 path"),
      h("dd", {}, h("code", { class: "s3-path" }, service.s3_path), copyButton(service.s3_path, "S3 path")),
      bucket ? [h("dt", {}, "Import location"), h("dd", {}, h("code", {}, importLocation(bucket, service)))] : null,
      h("dt", {}, "Created"),
      h("dd", {}, when(service.created)),
      h("dt", {}, "Last changed"),
      h("dd", {}, when(service.last_modified)),
    ),
    h(
      "p",
      { class: "row-actions" },
      h("a", { href: `${base}/tables` }, "Attributes dashboard"),
      h("a", { href: `${base}/profiles` }, "Profiles"),
    ),
  );
}

function importLocation(bucket, service) {
  return `${bucket}/${service.s3_path}/<table id>/`;
}

function renameForm(service, refresh) {
  return panel(
    "Name",
    form({
      label: "Rename the DCP service",
      submit: "Rename",
      fields: [field({ label: "Name", name: "name", value: service.name, required: true })],
      async onSubmit(values) {
        const saved = await api.put(`${V1}/dcp_services/${service.id}`, { name: values.name.trim() });
        notify(`Renamed to “${saved.name}”.`);
        await refresh();
      },
    }),
  );
}

// The empty customer id is a guard's default entry; a line of its own could not show it.
const EMPTY_ID = '""';

function blockedText(ids) {
  return ids.map((id) => (id === "" ? EMPTY_ID : id)).join("\n");
}

function blockedIds(text) {
  return text
    .split("\n")
    .map((line) => line.trim())
    .filter((line) => line !== "")
    .map((line) => (line === EMPTY_ID ? "" : line));
}

function guardsForm(service, refresh) {
  const names = ["pii_guard", "alias_blocked_customer_ids", "alias_max_users_per_customer_id"];
  return panel(
    "Guards",
    h("p", {}, "What this DCP service refuses, so that no personal data is stored and one id cannot merge many visitors."),
    form({
      label: "Guards",
      submit: "Save guards",
      // The schema service names them by their place in the service: guards.<name>.
      aliases: Object.fromEntries(names.map((name) => [`guards.${name}`, name])),
      fields: [
        field({
          label: "PII guard: refuse customer ids and text values that look like an e-mail address, a US social security number or a payment card number",
          name: "pii_guard",
          type: "checkbox",
          value: service.pii_guard,
        }),
        field({
          label: "Blocked customer ids",
          name: "alias_blocked_customer_ids",
          type: "textarea",
          value: blockedText(service.alias_blocked_customer_ids),
          hint: `Placeholder ids a page may send that are never linked to a visitor; one a line, compared without regard to case. Write ${EMPTY_ID} for the empty id.`,
        }),
        field({
          label: "Most visitors per customer id",
          name: "alias_max_users_per_customer_id",
          type: "number",
          min: 1,
          step: 1,
          value: service.alias_max_users_per_customer_id,
          required: true,
          hint: "How many Optimizely users one customer id may be linked to, so that a hard-coded id cannot merge a whole audience.",
        }),
      ],
      async onSubmit(values, element) {
        const max = element.elements.alias_max_users_per_customer_id;
        if (max.validity.badInput || values.alias_max_users_per_customer_id.trim() === "") {
          throw fieldProblem("alias_max_users_per_customer_id", "enter a whole number, from 1 to 1,000,000");
        }
        await api.put(`${V1}/dcp_services/${service.id}`, {
          pii_guard: values.pii_guard,
          alias_blocked_customer_ids: blockedIds(values.alias_blocked_customer_ids),
          alias_max_users_per_customer_id: Number(values.alias_max_users_per_customer_id),
        });
        notify("Guards saved.");
        await refresh();
      },
    }),
  );
}

// Projects

function projectLabel(project) {
  const linked = project.dcp_service_id ? `, now linked to DCP service ${project.dcp_service_id}` : "";
  return `${project.project_name} (project ${project.id}${linked})`;
}

function projectsPanel(service, projects, refresh) {
  const linked = projects.filter((p) => p.dcp_service_id === service.id);
  const others = projects.filter((p) => p.dcp_service_id !== service.id);
  const line = statusLine();
  const unlink = (project) =>
    runAction(line, async () => {
      if (!(await confirmAction(`Unlink the project “${project.project_name}” from this DCP service?`, "Unlink"))) return;
      await api.put(`${V1}/projects/${project.id}`, { dcp_service_id: null });
      notify(`Project “${project.project_name}” unlinked.`);
      await refresh();
    });
  return panel(
    "Projects",
    h("p", {}, "The projects whose audiences use this DCP service's attributes. A project uses at most one DCP service."),
    line,
    linked.length
      ? table(
          [
            ["Project", (p) => p.project_name],
            ["Project id", (p) => String(p.id)],
            [
              "",
              (p) => button("Unlink", () => unlink(p), { label: `Unlink ${p.project_name}` }),
            ],
          ],
          linked,
          { caption: "Linked projects" },
        )
      : empty("No project is linked to this DCP service yet. Create one here, or link one you have."),
    service.archived ? null : projectForms(service, others, refresh),
  );
}

function projectForms(service, others, refresh) {
  const create = form({
    label: "Create a project linked to this DCP service",
    submit: "Create project",
    fields: [field({ label: "New project name", name: "project_name", required: true })],
    async onSubmit(values) {
      const body = { project_name: values.project_name.trim(), dcp_service_id: service.id };
      const created = await api.post(`${V1}/projects`, body);
      notify(`Project “${created.project_name}” created and linked.`);
      await refresh();
    },
  });
  create.classList.add("form-inline");
  if (!others.length) return h("div", { class: "project-forms" }, create);
  const link = form({
    label: "Link an existing project",
    submit: "Link project",
    aliases: { dcp_service_id: "project_id" },
    fields: [
      field({
        label: "Existing project",
        name: "project_id",
        type: "select",
        options: others.map((p) => ({ value: p.id, label: projectLabel(p) })),
      }),
    ],
    async onSubmit(values) {
      const saved = await api.put(`${V1}/projects/${values.project_id}`, { dcp_service_id: service.id });
      notify(`Project “${saved.project_name}” linked.`);
      await refresh();
    },
  });
  link.classList.add("form-inline");
  return h("div", { class: "project-forms" }, create, link);
}

function archivePanel(service, refresh) {
  const line = statusLine();
  return panel(
    "Archive",
    h(
      "p",
      {},
      "An archived DCP service takes no more data and can no longer change; its tables are archived with it. The account may then create another DCP service.",
    ),
    line,
    h(
      "button",
      {
        type: "button",
        class: "danger",
        onclick: () =>
          runAction(line, async () => {
            const question =
              `Archive the DCP service “${service.name}”? ` +
              "Its tables and attributes are archived with it, and this cannot be undone.";
            if (!(await confirmAction(question, "Archive"))) return;
            await api.del(`${V1}/dcp_services/${service.id}`);
            notify(`DCP service “${service.name}” archived.`);
            await refresh();
          }),
      },
      "Archive DCP service",
    ),
  );
}
