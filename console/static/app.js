// The console's shell: sign-in, the navigation of the current DCP service, and a hash router
// (the token never enters the URL; routes hold only ids).

import { api, ApiError, consoleConfig, onSignedOut, request, session } from "./lib/api.js";
import { h, mount } from "./lib/dom.js";
import { describe, errorBox, field, form, loading } from "./lib/ui.js";
import * as service from "./screens/service.js";
import * as attributes from "./screens/attributes.js";
import * as upload from "./screens/upload.js";
import * as profiles from "./screens/profiles.js";
import * as audiences from "./screens/audiences.js";
import * as exports from "./screens/exports.js";

const SCREENS = [service, attributes, upload, profiles, audiences, exports];
const SERVICE_KEY = "open-dcp.service";

function compile(path) {
  const names = [];
  const pattern = path.replace(/:(\w+)/g, (_, name) => {
    names.push(name);
    return "([^/]+)";
  });
  return { regex: new RegExp(`^${pattern}$`), names };
}

const ROUTES = SCREENS.flatMap((screen) => screen.routes || []).map((route) => ({ ...route, ...compile(route.path) }));

function match(path) {
  for (const route of ROUTES) {
    const found = route.regex.exec(path);
    if (found) {
      const params = {};
      route.names.forEach((name, index) => {
        params[name] = decodeURIComponent(found[index + 1]);
      });
      return { route, params };
    }
  }
  return null;
}

const root = document.getElementById("app");
let cleanup = null;
let ctx = null;

function currentPath() {
  const hash = window.location.hash.replace(/^#/, "");
  return hash.split("?")[0] || "/";
}

/** The query part of the hash route (#/path?key=value), for screens that keep state there. */
export function routeQuery() {
  const hash = window.location.hash.replace(/^#/, "");
  const index = hash.indexOf("?");
  return new URLSearchParams(index >= 0 ? hash.slice(index + 1) : "");
}

function navigate(path) {
  if (window.location.hash === `#${path}`) route();
  else window.location.hash = path;
}

function navLinks(serviceId) {
  if (!serviceId) return [["#/", "DCP services"]];
  const base = `#/services/${serviceId}`;
  return [
    [base, "DCP service"],
    [`${base}/tables`, "Attributes"],
    [`${base}/profiles`, "Profiles"],
    [`${base}/audiences`, "Audiences"],
    [`${base}/exports`, "Exports"],
  ];
}

function renderShell(account) {
  const main = h("main", { id: "main", tabindex: "-1" });
  const nav = h("nav", { class: "site-nav", "aria-label": "Main" });
  const header = h(
    "header",
    { class: "site-header" },
    h("a", { class: "skip", href: "#main", onclick: (event) => { event.preventDefault(); main.focus(); } }, "Skip to content"),
    h("a", { class: "brand", href: "#/" }, h("img", { src: "/console/static/icon.svg", alt: "", width: 24, height: 24 }), "Open DCP"),
    nav,
    h(
      "div",
      { class: "account" },
      h("span", { class: "account-name", title: `account ${account.accountId}` }, account.accountName || `account ${account.accountId}`),
      h("button", { type: "button", onclick: () => session.signOut() }, "Sign out"),
    ),
  );
  mount(root, header, h("div", { id: "notices", "aria-live": "polite" }), main);
  return { main, nav };
}

function updateNav(nav, serviceId) {
  const path = currentPath();
  mount(
    nav,
    h(
      "ul",
      {},
      navLinks(serviceId).map(([href, label]) => {
        const target = href.slice(1);
        const active = path === target || (target !== "/" && target.split("/").length > 3 && path.startsWith(`${target}/`));
        return h("li", {}, h("a", { href, "aria-current": active ? "page" : null }, label));
      }),
    ),
  );
}

let shown = 0;

async function route() {
  if (!ctx) return;
  shown += 1;
  const generation = shown;
  if (cleanup) {
    try {
      cleanup();
    } catch (error) {
      // A screen that failed to clean up must not keep the next one from showing.
    }
    cleanup = null;
  }
  const path = currentPath();
  const found = match(path);
  if (found && found.params.serviceId) sessionStorage.setItem(SERVICE_KEY, found.params.serviceId);
  const serviceId = (found && found.params.serviceId) || sessionStorage.getItem(SERVICE_KEY);
  updateNav(ctx.nav, serviceId);
  if (!found) {
    document.title = "Not found · Open DCP";
    mount(ctx.main, h("h1", {}, "Page not found"), h("p", {}, h("a", { href: "#/" }, "Go to your DCP services")));
    return;
  }
  document.title = `${found.route.title || "Console"} · Open DCP`;
  // Each route draws into a view of its own: when people move on before a slow screen has
  // loaded, its late answer lands in a view no longer on the page instead of over the next one.
  const view = h("div", { class: "view" }, loading());
  mount(ctx.main, view);
  try {
    const result = await found.route.render(found.params, view, ctx);
    if (typeof result === "function") {
      if (generation === shown) cleanup = result;
      else result();
    }
  } catch (error) {
    if (generation === shown) mount(view, errorBox(error, () => route()));
  }
}

function signInScreen(message) {
  document.title = "Sign in · Open DCP";
  const signIn = form({
    label: "Sign in",
    submit: "Sign in",
    fields: [
      field({
        label: "API token",
        name: "token",
        type: "password",
        required: true,
        autocomplete: "off",
        hint: "A classic token (dcp tokens create, or the one dcp up printed) or an OAuth 2.0 bearer token. It is kept in this browser tab only.",
      }),
    ],
    async onSubmit(values) {
      const token = values.token.trim();
      if (!token) throw new ApiError(400, { message: "Enter a token.", errors: [{ field: "token", message: "is required" }] });
      let account;
      try {
        const response = await request("GET", "/api/whoami", { token });
        account = await response.json();
      } catch (error) {
        if (error instanceof ApiError && error.status !== 0) {
          throw new ApiError(error.status, { code: error.code, message: error.message, errors: [{ field: "token", message: error.message }] });
        }
        throw error;
      }
      session.signIn(token);
      await start(account);
    },
  });
  mount(
    root,
    h(
      "main",
      { class: "signin" },
      h("h1", {}, h("img", { src: "/console/static/icon.svg", alt: "", width: 32, height: 32 }), " Open DCP console"),
      message ? h("p", { class: "state error", role: "alert" }, message) : null,
      signIn,
    ),
  );
  signIn.querySelector("input").focus();
}

// Asked for once, at load, alongside the sign-in check rather than after it.
const configLoaded = consoleConfig().catch(() => ({ s3: {} }));

async function start(account) {
  const { main, nav } = renderShell(account);
  // Without it the Data Upload screen says what it cannot show; the rest works without it.
  const config = await configLoaded;
  ctx = { account, config, main, nav, navigate, api };
  await route();
}

async function boot() {
  window.addEventListener("hashchange", route);
  onSignedOut(() => {
    ctx = null;
    if (cleanup) cleanup();
    cleanup = null;
    sessionStorage.removeItem(SERVICE_KEY);
    signInScreen();
  });
  if (!session.token()) {
    signInScreen();
    return;
  }
  mount(root, loading("Signing in"));
  try {
    const account = await api.get("/api/whoami");
    await start(account);
  } catch (error) {
    if (error instanceof ApiError && (error.status === 401 || error.status === 403)) {
      session.signOut();
      signInScreen(describe(error));
    } else {
      mount(root, errorBox(error, boot));
    }
  }
}

boot();
