// Audiences: the projects linked to a DCP service and their audiences, and the builder of one
// audience's conditions with its live member count, a one-visitor check and its members.

import { api, ApiError } from "../lib/api.js";
import { count, h, mount, when } from "../lib/dom.js";
import { badge, confirmAction, describe, empty, field, form, loadInto, notify, pager, table } from "../lib/ui.js";
import { conditionsEditor, MATCH_LABELS, marker } from "./audience-conditions.js";

const V1 = "/experiment/v1";
const COUNT_DELAY_MS = 400;

/** The projects linked to this DCP service (the API lists all of the account's). */
export async function linkedProjects(serviceId) {
  const projects = await api.get(`${V1}/projects`);
  return projects.filter((project) => String(project.dcp_service_id) === String(serviceId));
}

export function serviceTables(serviceId) {
  return api.get(`${V1}/dcp_services/${serviceId}/dcp_datasources`);
}

function servicePath(serviceId, rest = "") {
  return `#/services/${serviceId}${rest}`;
}

// ---------------------------------------------------------------------------------------------
// The audiences of the linked projects

function projectForm(serviceId, ctx, label) {
  return form({
    label,
    submit: "Create project",
    fields: [field({ label: "Project name", name: "project_name", required: true })],
    async onSubmit(values) {
      await api.post(`${V1}/projects`, { project_name: values.project_name.trim(), dcp_service_id: Number(serviceId) });
      notify(`Project “${values.project_name.trim()}” created`);
      ctx.navigate(`/services/${serviceId}/audiences`);
    },
  });
}

function audienceTable(serviceId, audiences) {
  // Active audiences first: the archived ones stay listed, greyed, for reference.
  const ordered = [...audiences].sort((a, b) => Number(a.archived) - Number(b.archived));
  return table(
    [
      ["Audience", (a) => h("a", { href: servicePath(serviceId, `/audiences/${a.id}`) }, a.name)],
      ["Description", (a) => a.description || ""],
      ["Status", (a) => badge(a.archived ? "archived" : "active")],
      ["Last changed", (a) => when(a.last_modified)],
    ],
    ordered,
    { rowProps: (a) => ({ class: a.archived ? "archived" : null }) },
  );
}

function projectPanel(serviceId, project) {
  const list = h("div", {});
  loadInto(
    list,
    () => api.get(`${V1}/projects/${project.id}/audiences`),
    (audiences) =>
      audiences.length
        ? audienceTable(serviceId, audiences)
        : empty("No audiences in this project yet: create the first with “New audience”."),
    "Loading the audiences",
  );
  return h(
    "section",
    { class: "panel", "aria-label": `Project ${project.project_name}` },
    h(
      "div",
      { class: "toolbar panel-head" },
      h("h2", { class: "grow" }, project.project_name, " ", h("span", { class: "hint" }, `project ${project.id}`)),
      h(
        "a",
        { class: "button primary", href: servicePath(serviceId, `/projects/${project.id}/audiences/new`) },
        "New audience",
        h("span", { class: "offscreen" }, ` in ${project.project_name}`),
      ),
    ),
    list,
  );
}

async function renderAudiences({ serviceId }, main, ctx) {
  // The service is read too, so a wrong or foreign id says so instead of offering an empty list.
  const [service, projects] = await Promise.all([api.get(`${V1}/dcp_services/${serviceId}`), linkedProjects(serviceId)]);
  const intro = h(
    "p",
    { class: "hint intro" },
    `An audience is a set of conditions over the attributes of the DCP service “${service.name}”; it belongs to a project linked to the service.`,
  );
  if (!projects.length) {
    mount(
      main,
      h("h1", {}, "Audiences"),
      intro,
      empty("No project is linked to this DCP service yet. Create a project linked to it first; its audiences can then use the service's attributes."),
      h("section", { class: "panel" }, h("h2", {}, "Create a project"), projectForm(serviceId, ctx, "Create a project")),
    );
    return;
  }
  mount(
    main,
    h("h1", {}, "Audiences"),
    intro,
    projects.map((project) => projectPanel(serviceId, project)),
    h(
      "details",
      { class: "panel" },
      h("summary", {}, "Create another project linked to this service"),
      projectForm(serviceId, ctx, "Create another project"),
    ),
  );
}

// ---------------------------------------------------------------------------------------------
// The builder screen

/** Splits an API error into the part about conditions (shown in the editor) and the rest. */
function splitTreeErrors(error) {
  if (!(error instanceof ApiError)) return { tree: [], rest: error };
  const tree = error.errors.filter((item) => /^conditions(\[|\.|$)/.test(item.field));
  if (!tree.length) return { tree, rest: error };
  const others = error.errors.filter((item) => !tree.includes(item));
  const rest = new ApiError(error.status, {
    code: error.code,
    message: "Some conditions are not valid: see the messages next to them.",
    errors: others,
  });
  return { tree, rest };
}

function countPanel() {
  const figure = h("output", { class: "count-figure", "aria-live": "polite" }, "—");
  const note = h("p", { class: "hint", "aria-live": "polite" });
  return {
    element: h("section", { class: "panel builder-count", "aria-label": "Live count" }, h("h2", {}, "Live count"), figure, note),
    show(value, why = "") {
      figure.textContent = value;
      note.textContent = why;
    },
  };
}

function evaluatePanel({ serviceId, projectId, editor }) {
  const result = h("div", { class: "evaluation", "aria-live": "polite" });
  const panel = h(
    "section",
    { class: "panel", "aria-label": "Check a visitor" },
    h("h2", {}, "Check a visitor"),
    h("p", { class: "hint" }, "Evaluates the conditions as they are in the editor, saved or not, for one Optimizely user."),
    form({
      label: "Check a visitor",
      submit: "Evaluate",
      fields: [field({ label: "Optimizely user id", name: "user", required: true, autocomplete: "off" })],
      async onSubmit(values) {
        const user = values.user.trim();
        if (!user) throw new ApiError(400, { message: "Enter an Optimizely user id.", errors: [{ field: "user", message: "is required" }] });
        const missing = editor.gaps();
        if (editor.isEmpty() || missing.length) {
          if (missing.length) editor.showProblems(missing);
          throw new ApiError(400, { message: "Complete the conditions first." });
        }
        let answer;
        try {
          answer = await api.post(`/api/audiences/evaluate/${serviceId}/${encodeURIComponent(user)}`, {
            project_id: projectId,
            conditions: editor.json(),
          });
        } catch (error) {
          const { tree, rest } = splitTreeErrors(error);
          if (tree.length) editor.showProblems(tree);
          throw rest;
        }
        const outcome = answer.audiences[0];
        editor.showOutcome(outcome.conditions);
        showResult(user, outcome);
      },
    }),
    result,
  );
  function showResult(user, outcome) {
    mount(
      result,
      h(
        "p",
        { class: "evaluation-verdict" },
        marker(outcome.matched ? "matched" : "held_not", outcome.matched ? "matched" : "not matched"),
        " ",
        h("strong", {}, user),
        outcome.matched ? " is in this audience." : " is not in this audience.",
      ),
      h(
        "ul",
        { class: "evaluation-leaves", "aria-label": "Each condition for this visitor" },
        outcome.conditions.map((leaf) => {
          const named = editor.describeLeaf(leaf.path);
          return h(
            "li",
            {},
            marker(leaf.held ? "matched" : "held_not", leaf.held ? "held" : "did not hold"),
            " ",
            h("strong", {}, named.label),
            `: ${named.attribute} (${named.table}) ${MATCH_LABELS[leaf.matchType] || leaf.matchType}`,
            leaf.usable ? "" : " (archived: never holds)",
          );
        }),
      ),
    );
  }
  return {
    element: panel,
    stale() {
      if (result.firstChild && !result.querySelector(".stale")) {
        result.prepend(h("p", { class: "hint stale" }, "The conditions have changed since this check: evaluate again."));
      }
    },
  };
}

function membersPanel(audienceId) {
  const saved = h("p", { "aria-live": "polite" });
  const list = h("div", {});
  let perPage = 25;
  function refresh() {
    loadInto(
      saved,
      () => api.get(`${V1}/audiences/${audienceId}/members/count`),
      (answer) => h("span", {}, "Saved audience: ", h("strong", {}, count(answer.count)), ` member${answer.count === 1 ? "" : "s"}`),
      "Counting",
    );
    mount(
      list,
      pager({
        fetchPage: (path) => (path ? api.page(path) : api.page(`${V1}/audiences/${audienceId}/members`, { per_page: perPage })),
        render: (items) => table([["Optimizely user id", (member) => h("code", {}, member.optimizely_user_id)]], items),
        emptyMessage: "No members: no known Optimizely user matches the saved conditions.",
        what: "Loading the members",
      }),
    );
  }
  const size = field({ label: "Per page", name: "per_page", type: "select", value: String(perPage), options: ["10", "25", "100", "1000"] });
  size.querySelector("select").addEventListener("change", (event) => {
    perPage = Number(event.target.value);
    refresh();
  });
  refresh();
  return {
    element: h("section", { class: "panel", "aria-label": "Members" }, h("div", { class: "toolbar panel-head" }, h("h2", { class: "grow" }, "Members"), size), saved, list),
    refresh,
  };
}

async function loadBuilder({ serviceId, projectId, audienceId }) {
  const audience = audienceId ? await api.get(`${V1}/audiences/${audienceId}`) : null;
  const pid = audience ? audience.project_id : projectId;
  const [project, tables] = await Promise.all([api.get(`${V1}/projects/${pid}`), serviceTables(serviceId)]);
  return { audience, project, tables };
}

async function renderBuilder(params, main, ctx) {
  const { serviceId } = params;
  const { audience, project, tables } = await loadBuilder(params);
  const readOnly = Boolean(audience && audience.archived);
  const live = countPanel();
  let timer = null;
  let asked = 0;
  let evaluation = null;

  const editor = conditionsEditor({
    tables,
    conditions: audience ? audience.conditions : "",
    readOnly,
    onChange() {
      if (evaluation) evaluation.stale();
      clearTimeout(timer);
      asked += 1;
      live.show("…", "Counting as the conditions change");
      timer = setTimeout(countNow, COUNT_DELAY_MS);
    },
  });
  evaluation = evaluatePanel({ serviceId, projectId: project.id, editor });

  async function countNow() {
    const mine = ++asked;
    const missing = editor.gaps();
    if (editor.isEmpty()) return live.show("—", "Add a condition to count its members.");
    if (missing.length) {
      const first = missing[0];
      const what = first.node.kind === "leaf" ? `condition ${first.node.label}` : `group ${first.node.label}`;
      return live.show("—", `Incomplete: ${what}: ${first.reason}.`);
    }
    try {
      const answer = await api.post(`${V1}/projects/${project.id}/audiences/count`, { conditions: editor.json() });
      if (mine !== asked) return undefined;
      editor.showProblems([]);
      return live.show(count(answer.count), "Known Optimizely users matching the conditions now.");
    } catch (error) {
      if (mine !== asked) return undefined;
      const { tree } = splitTreeErrors(error);
      if (tree.length) {
        editor.showProblems(tree);
        return live.show("—", "The conditions are not valid: see the messages next to them.");
      }
      return live.show("—", describe(error));
    }
  }

  const members = audience ? membersPanel(audience.id) : null;
  const title = h("span", {}, audience ? audience.name : "New audience");
  const saveForm = form({
    label: "Audience",
    submit: audience ? "Save audience" : "Create audience",
    fields: [
      field({ label: "Name", name: "name", value: audience ? audience.name : "", required: true, disabled: readOnly }),
      field({ label: "Description", name: "description", type: "textarea", value: audience ? audience.description : "", disabled: readOnly, rows: 2 }),
      editor.element,
    ],
    async onSubmit(values) {
      const missing = editor.gaps();
      if (missing.length) {
        editor.showProblems(missing);
        throw new ApiError(400, { message: "Complete the conditions marked below first." });
      }
      const body = { name: values.name.trim(), description: values.description, conditions: editor.json() };
      let saved;
      try {
        saved = audience
          ? await api.put(`${V1}/audiences/${audience.id}`, body)
          : await api.post(`${V1}/projects/${project.id}/audiences`, body);
      } catch (error) {
        const { tree, rest } = splitTreeErrors(error);
        if (tree.length) editor.showProblems(tree);
        throw rest;
      }
      if (!audience) {
        notify(`Audience “${saved.name}” created`);
        ctx.navigate(`/services/${serviceId}/audiences/${saved.id}`);
        return;
      }
      Object.assign(audience, saved);
      title.textContent = saved.name;
      notify(`Audience “${saved.name}” saved`);
      members.refresh();
    },
  });
  if (readOnly) saveForm.querySelector("button[type=submit]").disabled = true;

  const archive = audience && !readOnly
    ? h(
        "button",
        {
          type: "button",
          class: "danger",
          async onclick() {
            const yes = await confirmAction(`Archive the audience “${audience.name}”? It can no longer be changed or used.`, "Archive");
            if (!yes) return;
            try {
              await api.del(`${V1}/audiences/${audience.id}`);
              notify(`Audience “${audience.name}” archived`);
              ctx.navigate(`/services/${serviceId}/audiences/${audience.id}`);
            } catch (error) {
              notify(describe(error), "error");
            }
          },
        },
        "Archive audience",
      )
    : null;

  mount(
    main,
    h("p", { class: "crumbs" }, h("a", { href: servicePath(serviceId, "/audiences") }, "Audiences"), " › ", project.project_name),
    h("div", { class: "toolbar" }, h("h1", { class: "grow" }, title, " ", audience ? badge(audience.archived ? "archived" : "active") : null), archive),
    readOnly ? h("p", { class: "state empty" }, "This audience is archived: it is shown as it was, and can no longer be changed.") : null,
    h(
      "div",
      { class: "builder" },
      h("section", { class: "panel builder-main", "aria-label": "Definition" }, saveForm),
      h("div", { class: "builder-side" }, live.element, evaluation.element),
    ),
    members ? members.element : h("p", { class: "hint" }, "Its members are listed here once the audience is saved."),
  );
  countNow();
  return () => clearTimeout(timer);
}

export const routes = [
  { path: "/services/:serviceId/audiences", title: "Audiences", render: renderAudiences },
  { path: "/services/:serviceId/projects/:projectId/audiences/new", title: "New audience", render: renderBuilder },
  { path: "/services/:serviceId/audiences/:audienceId", title: "Audience", render: renderBuilder },
];
