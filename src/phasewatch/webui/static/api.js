// The JSON API as the pages use it: every failure is an Error with the server's one-line message.

// Send the browser to sign in, and back here afterwards (a deep link survives).
export function signIn() {
  const here = window.location.pathname + window.location.search;
  window.location.assign(here === "/" ? "/login" : `/login?next=${encodeURIComponent(here)}`);
}

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export async function api(url, options) {
  const response = await fetch(url, options);
  if (response.status === 401) {
    // The service wants its token (or the sign-in cookie expired): sign in again.
    signIn();
    throw new ApiError(401, "signing in");
  }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new ApiError(response.status, body.error || `${url}: HTTP ${response.status}`);
  return body;
}

// A picture the API serves (a field's labels), or null when there is none (404).
export async function apiBlob(url) {
  const response = await fetch(url);
  if (response.status === 401) {
    signIn();
    throw new ApiError(401, "signing in");
  }
  if (response.status === 404) return null;
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    throw new ApiError(response.status, body.error || `${url}: HTTP ${response.status}`);
  }
  return response.blob();
}

// Every change is JSON: the server refuses other content types (CSRF).
const send = (method) => (url, body = {}) =>
  api(url, { method, headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });

export const postJson = send("POST");
export const patchJson = send("PATCH");
export const putJson = send("PUT");
export const deleteJson = send("DELETE");
