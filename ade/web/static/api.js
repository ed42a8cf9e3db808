// The API from the browser: the key kept in localStorage, fetch with `Authorization: Bearer`, the one
// error shape, authenticated downloads.

export const API = "/api/v1";

const KEY_ITEM = "ade.apiKey";
const WORKSPACE_ITEM = "ade.workspaceId";

export const session = {
  get key() {
    return localStorage.getItem(KEY_ITEM) ?? "";
  },
  get workspaceId() {
    return localStorage.getItem(WORKSPACE_ITEM) ?? "";
  },
  get signedIn() {
    return Boolean(this.key && this.workspaceId);
  },
  save(key, workspaceId) {
    localStorage.setItem(KEY_ITEM, key);
    localStorage.setItem(WORKSPACE_ITEM, workspaceId);
  },
  clear() {
    localStorage.removeItem(KEY_ITEM);
    localStorage.removeItem(WORKSPACE_ITEM);
  },
};

/** An API error: `{error, code, details}` and the HTTP status. */
export class ApiError extends Error {
  constructor(status, body) {
    super(body?.error || `HTTP ${status}`);
    this.status = status;
    this.code = body?.code ?? "http_error";
    this.details = body?.details ?? [];
  }
}

/** Fired on `window` when the API refuses the key (401): the app goes back to the sign-in form. */
export const UNAUTHORIZED = "ade:unauthorized";

export function apiUrl(path) {
  return path.startsWith("/api/") ? path : API + path;
}

/**
 * Call the API. Returns the decoded JSON body (null for 204), or the Response itself with `raw: true`.
 * Throws ApiError for any non-2xx answer. `key` defaults to the stored one.
 */
export async function api(path, { method = "GET", body, signal, raw = false, key = session.key } = {}) {
  const headers = { Authorization: `Bearer ${key}`, Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(apiUrl(path), {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    signal,
    cache: "no-store",
  });
  if (!response.ok) {
    let payload = null;
    try {
      payload = await response.json();
    } catch {
      payload = { error: `${response.status} ${response.statusText}` };
    }
    const error = new ApiError(response.status, payload);
    if (response.status === 401) window.dispatchEvent(new CustomEvent(UNAUTHORIZED, { detail: error }));
    throw error;
  }
  if (raw) return response;
  if (response.status === 204) return null;
  return response.json();
}

/** `a/b c.txt` → `a/b%20c.txt`: each segment of a relative path encoded for a URL. */
export function encodePath(path) {
  return path.split("/").map(encodeURIComponent).join("/");
}

/**
 * Download an authenticated URL as a file. A plain link cannot send the Authorization header, so the
 * body is fetched as a blob and saved through an object URL with a `download` attribute.
 */
export async function download(path, filename) {
  const response = await api(path, { raw: true });
  const blob = await response.blob();
  const href = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = href;
  link.download = filename;
  link.hidden = true;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(href), 60_000);
}
