// keygate console: the "API Keys & Docs" page. No framework, no inline
// script (the page's Content-Security-Policy forbids it), no other host.
"use strict";

const $ = (id) => document.getElementById(id);
let csrf = null;
let current = null; // the key open in the key view

const views = ["signin-view", "keys-view", "secret-view", "key-view", "audit-view"];
function show(view) {
  for (const v of views) $(v).hidden = v !== view;
  $("nav").hidden = view === "signin-view";
}

function flash(text) {
  const f = $("flash");
  f.textContent = text;
  f.hidden = !text;
}

function fieldError(id, text) {
  const e = $(id);
  e.textContent = text || "";
  e.hidden = !text;
}

async function api(method, path, body) {
  const headers = {};
  if (body !== undefined) headers["content-type"] = "application/json";
  if (method !== "GET" && csrf) headers["x-csrf-token"] = csrf;
  const res = await fetch(path, {
    method,
    headers,
    credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let data = null;
  if (res.status !== 204) {
    try { data = await res.json(); } catch (_) { data = null; }
  }
  if (res.status === 401 && path !== "/admin/session") {
    csrf = null;
    show("signin-view");
    throw new Error("signed out");
  }
  return { status: res.status, ok: res.ok, data };
}

function when(t) {
  if (!t) return "—";
  return new Date(t).toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

function accessLabel(a) {
  return a === "full-access" ? "Full Access" : "Read Only";
}

async function start() {
  const docs = document.querySelector('meta[name="docs-url"]').content;
  if (docs) {
    $("docs-link").href = docs;
    $("docs-link").hidden = false;
  }
  const me = await api("GET", "/admin/session");
  if (me.ok) {
    signedIn(me.data);
  } else {
    show("signin-view");
    $("signin-token").focus();
  }
}

function signedIn(me) {
  csrf = me.csrf;
  $("who").textContent = me.name + " (" + me.role + ")";
  document.body.dataset.role = me.role;
  loadKeys();
}

$("signin-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  fieldError("signin-error", "");
  const res = await api("POST", "/admin/session", { token: $("signin-token").value.trim() });
  if (res.ok) {
    $("signin-token").value = "";
    signedIn(res.data);
  } else {
    fieldError("signin-error", (res.data && res.data.message) || "Sign-in failed.");
  }
});

$("sign-out").addEventListener("click", async () => {
  await api("DELETE", "/admin/session");
  csrf = null;
  flash("");
  show("signin-view");
});

async function loadKeys() {
  const res = await api("GET", "/admin/v1/keys");
  const body = $("keys-table").querySelector("tbody");
  body.replaceChildren();
  for (const k of res.data.keys) {
    const tr = document.createElement("tr");
    const name = document.createElement("td");
    const open = document.createElement("button");
    open.type = "button";
    open.className = "link";
    open.textContent = k.name;
    open.addEventListener("click", () => openKey(k.id));
    name.append(open);
    tr.append(name);
    for (const v of [k.id, accessLabel(k.access), when(k.created), when(k.last_used), k.expires ? when(k.expires) : "never"]) {
      const td = document.createElement("td");
      td.textContent = v;
      tr.append(td);
    }
    body.append(tr);
  }
  $("no-keys").hidden = res.data.keys.length > 0;
  show("keys-view");
}

$("new-key").addEventListener("click", () => {
  $("create-form").reset();
  fieldError("create-name-error", "");
  fieldError("create-error", "");
  $("create-dialog").showModal();
  $("create-name").focus();
});
$("create-cancel").addEventListener("click", () => $("create-dialog").close());

$("create-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  fieldError("create-name-error", "");
  fieldError("create-error", "");
  const name = $("create-name").value.trim();
  if (!name) {
    fieldError("create-name-error", "Give the key a name, such as the shop or system that will use it.");
    return;
  }
  const access = new FormData($("create-form")).get("access");
  const res = await api("POST", "/admin/v1/keys", { name, access });
  if (!res.ok) {
    const target = res.data && res.data.field === "name" ? "create-name-error" : "create-error";
    fieldError(target, (res.data && res.data.message) || "The key was not created.");
    return;
  }
  $("create-dialog").close();
  showSecret(res.data, "Created");
});

function showSecret(key, verb) {
  $("secret-value").value = key.key;
  $("secret-advice").textContent = verb + " “" + key.name + "” (" + accessLabel(key.access) + "). " +
    (key.access === "full-access"
      ? "Use it from backend systems only, never in a browser or an app."
      : "It may be used in a frontend.");
  show("secret-view");
  $("secret-value").select();
}

$("copy-secret").addEventListener("click", async () => {
  const v = $("secret-value").value;
  try {
    await navigator.clipboard.writeText(v);
    flash("Copied.");
  } catch (_) {
    $("secret-value").select();
    document.execCommand("copy");
    flash("Copied.");
  }
});

$("secret-done").addEventListener("click", () => {
  $("secret-value").value = "";
  flash("");
  loadKeys();
});

async function openKey(id) {
  const res = await api("GET", "/admin/v1/keys/" + encodeURIComponent(id));
  if (!res.ok) {
    flash((res.data && res.data.message) || "That key could not be opened.");
    return;
  }
  current = res.data;
  $("key-title").textContent = current.name;
  $("key-id").textContent = current.id;
  $("key-created").textContent = when(current.created);
  $("key-last-used").textContent = current.last_used ? when(current.last_used) : "never (as far as the gateway has recorded)";
  $("key-expires").textContent = current.expires ? when(current.expires) : "never";
  $("key-rate-limit").textContent = current.rate_limit || "the default for its access type";
  $("key-rotating").textContent = current.rotating_until
    ? "the previous secret works until " + when(current.rotating_until)
    : "—";
  $("edit-name").value = current.name;
  for (const r of document.querySelectorAll('#edit-form input[name="access"]')) {
    r.checked = r.value === current.access;
  }
  fieldError("edit-name-error", "");
  fieldError("edit-error", "");
  const snippets = await api("GET", "/admin/v1/keys/" + encodeURIComponent(id) + "/snippets");
  const list = $("snippet-list");
  list.replaceChildren();
  for (const s of snippets.data.snippets) {
    const h = document.createElement("h4");
    h.textContent = s.title;
    const pre = document.createElement("pre");
    const code = document.createElement("code");
    code.dataset.snippet = s.id;
    code.textContent = s.code;
    pre.append(code);
    list.append(h, pre);
  }
  show("key-view");
  $("edit-name").focus();
}

$("back").addEventListener("click", () => { flash(""); loadKeys(); });

async function update(force) {
  fieldError("edit-name-error", "");
  fieldError("edit-error", "");
  const name = $("edit-name").value.trim();
  if (!name) {
    fieldError("edit-name-error", "The name cannot be empty.");
    return;
  }
  const access = new FormData($("edit-form")).get("access");
  const body = { name, access };
  if (force) body.force = true;
  const res = await api("PATCH", "/admin/v1/keys/" + encodeURIComponent(current.id), body);
  if (!res.ok) {
    const target = res.data && res.data.field === "name" ? "edit-name-error" : "edit-error";
    fieldError(target, (res.data && res.data.message) || "The key was not updated.");
    return;
  }
  flash("Updated “" + res.data.name + "”: " + accessLabel(res.data.access) + ".");
  await openKey(current.id);
}

$("edit-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const access = new FormData($("edit-form")).get("access");
  if (current.access === "read-only" && access === "full-access") {
    $("upgrade-dialog").showModal();
    return;
  }
  update(false);
});
$("upgrade-confirm").addEventListener("click", () => { $("upgrade-dialog").close(); update(true); });
$("upgrade-cancel").addEventListener("click", () => {
  $("upgrade-dialog").close();
  for (const r of document.querySelectorAll('#edit-form input[name="access"]')) {
    r.checked = r.value === current.access;
  }
  fieldError("edit-error", "Not upgraded: the key stays Read Only.");
});

$("rotate").addEventListener("click", () => $("rotate-dialog").showModal());
$("rotate-cancel").addEventListener("click", () => $("rotate-dialog").close());
$("rotate-confirm").addEventListener("click", async () => {
  $("rotate-dialog").close();
  const res = await api("POST", "/admin/v1/keys/" + encodeURIComponent(current.id) + "/rotate", {});
  if (!res.ok) {
    fieldError("edit-error", (res.data && res.data.message) || "The key was not rotated.");
    return;
  }
  showSecret(res.data, "Rotated");
});

$("delete").addEventListener("click", () => {
  $("delete-last-used").textContent = current.last_used
    ? "It was last used " + when(current.last_used) + "."
    : "The gateway has not recorded any use of it.";
  $("delete-dialog").showModal();
});
$("delete-cancel").addEventListener("click", () => $("delete-dialog").close());
$("delete-confirm").addEventListener("click", async () => {
  $("delete-dialog").close();
  const res = await api("DELETE", "/admin/v1/keys/" + encodeURIComponent(current.id));
  if (!res.ok) {
    fieldError("edit-error", (res.data && res.data.message) || "The key was not deleted.");
    return;
  }
  flash("Deleted “" + current.name + "”.");
  current = null;
  loadKeys();
});

$("show-audit").addEventListener("click", async () => {
  const res = await api("GET", "/admin/v1/audit?limit=200");
  const body = $("audit-table").querySelector("tbody");
  body.replaceChildren();
  for (const e of res.data.events) {
    const tr = document.createElement("tr");
    for (const v of [when(e.time), e.actor, e.action, e.key_id || "—", e.client || "—", JSON.stringify(e.changes)]) {
      const td = document.createElement("td");
      td.textContent = v;
      tr.append(td);
    }
    body.append(tr);
  }
  flash("");
  show("audit-view");
});
$("audit-back").addEventListener("click", () => loadKeys());

start();
