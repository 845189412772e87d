// The console's only way to the platform: the public v1 REST API, with the signed-in user's token.

const TOKEN_KEY = "open-dcp.token";

/** An error answer of the API, or a failure to reach it (status 0). */
export class ApiError extends Error {
  constructor(status, body, fallback) {
    const message = (body && typeof body.message === "string" && body.message) || fallback || `HTTP ${status}`;
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = (body && body.code) || "";
    /** [{field, message}] for bad input, as the API names them. */
    this.errors = Array.isArray(body && body.errors) ? body.errors : [];
    this.retryAfter = null;
  }
}

/** The token of this browser tab: sessionStorage only, never a cookie or the URL. */
export const session = {
  token() {
    return sessionStorage.getItem(TOKEN_KEY);
  },
  signIn(token) {
    sessionStorage.setItem(TOKEN_KEY, token);
  },
  signOut() {
    sessionStorage.removeItem(TOKEN_KEY);
    for (const listener of signedOutListeners) listener();
  },
};

const signedOutListeners = new Set();
/** Called when the API refuses the token (revoked, wrong): the console goes back to sign-in. */
export function onSignedOut(listener) {
  signedOutListeners.add(listener);
}

function withQuery(path, query) {
  if (!query) return path;
  const params = new URLSearchParams();
  for (const [key, value] of Object.entries(query)) {
    if (value !== undefined && value !== null && value !== "") params.set(key, String(value));
  }
  const text = params.toString();
  if (!text) return path;
  return path + (path.includes("?") ? "&" : "?") + text;
}

/**
 * One request. `body` is sent as JSON unless it is a Blob/File/string (sent as is).
 * Resolves to the Response for 2xx; rejects with ApiError otherwise.
 */
export async function request(method, path, { body, query, headers = {}, token = session.token() } = {}) {
  const init = { method, headers: { Accept: "application/json", ...headers } };
  if (token) init.headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) {
    if (body instanceof Blob || typeof body === "string") {
      init.body = body;
    } else {
      init.body = JSON.stringify(body);
      init.headers["Content-Type"] = "application/json";
    }
  }
  let response;
  try {
    response = await fetch(withQuery(path, query), init);
  } catch (error) {
    throw new ApiError(0, null, "The platform cannot be reached; check the connection and try again.");
  }
  if (response.ok) return response;
  let payload = null;
  try {
    payload = await response.json();
  } catch (error) {
    payload = null;
  }
  const failure = new ApiError(response.status, payload);
  failure.retryAfter = response.headers.get("Retry-After");
  if (response.status === 401 && token === session.token()) session.signOut();
  throw failure;
}

async function json(response) {
  if (response.status === 204) return null;
  const text = await response.text();
  return text ? JSON.parse(text) : null;
}

/** The `rel="next"` link of a paged answer, as a path for the next request, or null. */
function nextLink(response) {
  const header = response.headers.get("Link");
  if (!header) return null;
  const match = header.match(/<([^>]+)>\s*;\s*rel="?next"?/);
  if (!match) return null;
  const url = new URL(match[1], window.location.origin);
  return url.pathname + url.search;
}

export const api = {
  async get(path, query) {
    return json(await request("GET", path, { query }));
  },
  /** One page of a paged list: {items, next}; pass `next` back as the path for the following page. */
  async page(path, query) {
    const response = await request("GET", path, { query });
    return { items: await json(response), next: nextLink(response) };
  },
  async post(path, body, query) {
    return json(await request("POST", path, { body, query }));
  },
  async put(path, body) {
    return json(await request("PUT", path, { body }));
  },
  async del(path) {
    return json(await request("DELETE", path));
  },
  /** A non-JSON answer (a CSV), as text. */
  async text(path, query) {
    return (await request("GET", path, { query, headers: { Accept: "text/csv, */*" } })).text();
  },
};

/** The deployment's facts the API does not carry (where the S3 store is). */
export async function consoleConfig() {
  const response = await fetch("/console/config.json");
  return response.json();
}
