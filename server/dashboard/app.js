// nixstash dashboard. Reads /-/dashboard/api/* with the token the user typed (kept in sessionStorage only,
// sent as Authorization: Bearer) and renders the caches. Every value goes into the page through textContent:
// store paths, names and descriptions never become markup.

const TOKEN_KEY = "nixstash-token";
const $ = (id) => document.getElementById(id);

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

async function getJson(url) {
  const headers = { accept: "application/json" };
  if (token()) headers.authorization = `Bearer ${token()}`;
  const res = await fetch(url, { headers });
  const body = await res.json().catch(() => ({}));
  if (!res.ok) {
    const error = new Error(body.message || `HTTP ${res.status}`);
    error.status = res.status;
    throw error;
  }
  return body;
}

const UNITS = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
function bytes(n) {
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < UNITS.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${unit === 0 ? value : value.toFixed(value < 10 ? 2 : 1)} ${UNITS[unit]}`;
}

function ago(ms) {
  if (ms === null || ms === undefined) return "never";
  const s = Math.max(0, (Date.now() - ms) / 1000);
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

/** `/nix/store/<32-char hash>-name` → `/nix/store/<8 chars>…-name`: the name is what people look for. */
function shortPath(path) {
  const slash = path.lastIndexOf("/");
  const base = path.slice(slash + 1);
  return base.length > 33 && base[32] === "-" ? `${path.slice(0, slash + 9)}…${base.slice(32)}` : path;
}

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function pathRows(tbody, paths, columns) {
  tbody.replaceChildren();
  if (paths.length === 0) {
    const tr = document.createElement("tr");
    const td = cell("nothing yet", "empty");
    td.colSpan = columns;
    tr.append(td);
    tbody.append(tr);
    return;
  }
  for (const p of paths) {
    const tr = document.createElement("tr");
    const name = cell(shortPath(p.storePath));
    name.title = p.storePath;
    name.dataset.path = p.storePath;
    tr.append(name, cell(bytes(p.narSize), "num"));
    if (columns === 4) tr.append(cell(bytes(p.fileSize), "num"));
    const when = cell(ago(p.createdAt));
    when.title = new Date(p.createdAt).toISOString();
    tr.append(when);
    tbody.append(tr);
  }
}

async function copy(button, text) {
  try {
    await navigator.clipboard.writeText(text);
    button.textContent = "Copied";
  } catch {
    // Clipboard API unavailable (plain http on another host): select the text for Ctrl+C instead.
    const range = document.createRange();
    range.selectNodeContents(button.previousElementSibling);
    const selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    button.textContent = "Selected";
  }
  setTimeout(() => {
    button.textContent = "Copy";
  }, 1500);
}

function renderCache(cache) {
  const node = $("cache-template").content.firstElementChild.cloneNode(true);
  node.dataset.cache = cache.name;
  node.querySelector(".cache-name").textContent = cache.name;
  const badge = node.querySelector(".badge");
  badge.textContent = cache.public ? "public" : "private";
  badge.classList.add(cache.public ? "public" : "private");
  node.querySelector(".priority").textContent = `priority ${cache.priority}`;
  node.querySelector(".description").textContent = cache.description;
  node.querySelector(".paths-count").textContent = cache.paths.toLocaleString("en");
  node.querySelector(".nar-bytes").textContent = bytes(cache.narBytes);
  node.querySelector(".file-bytes").textContent = bytes(cache.fileBytes);
  node.querySelector(".last-push").textContent = ago(cache.lastPushAt);
  node.querySelector(".nix-conf").textContent = cache.snippets.nixConf;
  if (cache.snippets.netrc) node.querySelector(".netrc").textContent = cache.snippets.netrc;
  else node.querySelector(".netrc-block").remove();
  for (const button of node.querySelectorAll(".copy")) {
    button.addEventListener("click", () => copy(button, button.previousElementSibling.textContent));
  }
  pathRows(node.querySelector(".recent tbody"), cache.recent, 3);
  return node;
}

function showMessage(text) {
  const m = $("message");
  m.textContent = text;
  m.hidden = !text;
}

async function load(refused = false) {
  const status = $("token-status");
  if (!refused) status.classList.remove("error");
  $("token-forget").hidden = !token();
  let data;
  try {
    data = await getJson("/-/dashboard/api/caches");
  } catch (error) {
    if (error.status === 401 && token()) {
      status.textContent = `token refused: ${error.message}`;
      status.classList.add("error");
      sessionStorage.removeItem(TOKEN_KEY);
      $("token-forget").hidden = true;
      return load(true);
    }
    showMessage(`Cannot load the caches: ${error.message}`);
    return;
  }
  showMessage("");
  if (data.signedInAs) status.textContent = `using token “${data.signedInAs}”`;
  else if (!refused) status.textContent = "anonymous: public caches only";
  $("caches").replaceChildren(...data.caches.map(renderCache));
  if (data.caches.length === 0) showMessage("No cache is visible. Private caches need a token with pull.");
  const select = $("search-cache");
  const previous = select.value;
  select.replaceChildren(
    ...data.caches.map((c) => {
      const option = document.createElement("option");
      option.value = c.name;
      option.textContent = c.name;
      return option;
    }),
  );
  if (data.caches.some((c) => c.name === previous)) select.value = previous;
}

async function search(event) {
  event.preventDefault();
  const cache = $("search-cache").value;
  const q = $("search-input").value.trim();
  const status = $("search-status");
  const table = $("search-results");
  status.classList.remove("error");
  if (!cache || q.length < 2) {
    status.textContent = "Type at least 2 characters.";
    table.hidden = true;
    return;
  }
  status.textContent = "Searching…";
  try {
    const result = await getJson(
      `/-/dashboard/api/caches/${encodeURIComponent(cache)}/paths?q=${encodeURIComponent(q)}`,
    );
    const n = result.paths.length;
    status.textContent = `${n}${result.truncated ? "+" : ""} path${n === 1 ? "" : "s"} in ${result.cache} matching “${result.query}”`;
    pathRows(table.querySelector("tbody"), result.paths, 4);
    table.hidden = n === 0;
  } catch (error) {
    status.textContent = error.message;
    status.classList.add("error");
    table.hidden = true;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const value = $("token-input").value.trim();
    $("token-input").value = "";
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    $("token-status").textContent = "";
    load();
  });
  $("token-forget").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    $("token-status").textContent = "";
    load();
  });
  $("search-form").addEventListener("submit", search);
  load();
});
