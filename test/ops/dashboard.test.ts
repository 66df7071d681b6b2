// The web dashboard in a real browser (Debian's headless Chromium driven by playwright-core) against the
// real server process: the public cache with its size, path count, recent pushes and nix.conf snippet; a
// private cache hidden until a token with pull is entered, then shown with its netrc snippet; store-path
// search; a refused token; no script or CSP errors. A full-page screenshot is kept in test-artifacts/.
import assert from "node:assert/strict";
import { existsSync, mkdirSync, mkdtempSync } from "node:fs";
import { join, resolve } from "node:path";
import { after, before, describe, it } from "node:test";
import { type BrowserContext, chromium, type Locator, type Page } from "playwright-core";
import { fakeStorePath, hashOf, infoFor, narOf } from "../support/nar.ts";
import { testTmp } from "../support/services.ts";
import { type RunningStack, startStack } from "../support/stack.ts";

const CHROMIUM = "/usr/bin/chromium";
const ARTIFACTS = resolve(import.meta.dirname, "../../test-artifacts");

describe("web dashboard in headless Chromium", () => {
  let s: RunningStack | undefined;
  let browser: BrowserContext | undefined;
  let page: Page;
  const problems: string[] = [];
  let teamToken = "";
  const pushed: Record<string, string[]> = { main: [], team: [] };

  before(async () => {
    if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: apt-get install -y chromium`);
    s = await startStack("sqlite+local");
    if (!s) return;
    const admin = { authorization: `Bearer ${s.server.adminToken}` };
    const created = await fetch(`${s.server.url}/api/v1/caches`, {
      method: "POST",
      headers: admin,
      body: JSON.stringify({ name: "team", public: false, description: "Team builds (private)" }),
    });
    assert.equal(created.status, 201, await created.text());
    teamToken = await s.token(["pull"], ["team"]);
    for (const [cache, names] of [
      ["main", ["dash-hello-2.12", "dash-openssl-3.0.13", "dash-zlib-1.3"]],
      ["team", ["dash-secret-tool-1.0"]],
    ] as const) {
      for (const name of names) {
        const path = fakeStorePath(name);
        const nar = narOf({ dir: { bin: { dir: { [name]: { executable: `#!/bin/sh\necho ${name}\n` } } } } });
        const res = await fetch(`${s.server.url}/api/v1/caches/${cache}/paths/${hashOf(path)}`, {
          method: "PUT",
          headers: { ...admin, "x-nixstash-path-info": JSON.stringify(infoFor(path, nar)) },
          body: nar,
        });
        assert.equal(res.status, 201, await res.text());
        pushed[cache]!.push(path);
      }
    }
    browser = await chromium.launchPersistentContext(mkdtempSync(join(testTmp(), "chromium-")), {
      executablePath: CHROMIUM,
      headless: true,
      args: [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
      ],
      viewport: { width: 1280, height: 900 },
      colorScheme: "light",
    });
    page = browser.pages()[0] ?? (await browser.newPage());
    page.setDefaultTimeout(15_000);
    page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
    page.on("console", (message) => {
      if (message.type() === "error" && !/401 \(Unauthorized\)/.test(message.text()))
        problems.push(`console: ${message.text()}`);
    });
  });
  after(async () => {
    await browser?.close();
    await s?.stop();
  });

  /** The full store paths behind shortened table cells. */
  const paths = (cells: Locator) =>
    cells.evaluateAll((tds) => tds.map((td) => td.getAttribute("data-path") ?? ""));
  const card = (name: string) => page.locator(`article.cache[data-cache="${name}"]`);

  it("shows the public cache: size, path count, recent pushes, nix.conf lines", async (t) => {
    if (!s) return t.skip("backend unavailable");
    await page.goto(`${s.server.url}/`);
    await card("main").waitFor();
    assert.equal(await card("team").count(), 0, "a private cache stays hidden without a token");
    assert.equal(await card("main").locator(".paths-count").textContent(), "3");
    assert.match((await card("main").locator(".nar-bytes").textContent()) ?? "", /^\d+(\.\d+)? (B|KiB)$/);
    assert.equal(await card("main").locator(".badge").textContent(), "public");
    const recent = await paths(card("main").locator(".recent tbody td:first-child"));
    assert.match(
      (await card("main").locator(".recent tbody td:first-child").first().textContent()) ?? "",
      /^\/nix\/store\/[0-9a-z]{8}…-dash-/,
      "hash shortened, name kept",
    );
    assert.deepEqual([...recent].sort(), [...pushed.main!].sort());
    const nixConf = await card("main").locator(".nix-conf").textContent();
    assert.equal(
      nixConf,
      `extra-substituters = ${s.server.url}/main\nextra-trusted-public-keys = ${s.server.publicKey}`,
    );
    assert.equal(await card("main").locator(".netrc").count(), 0, "no netrc for a public cache");
    assert.match((await page.locator("#token-status").textContent()) ?? "", /anonymous/);
  });

  it("searches store paths", async (t) => {
    if (!s) return t.skip("backend unavailable");
    await page.selectOption("#search-cache", "main");
    await page.fill("#search-input", "OPENSSL");
    await page.click("#search-form button[type=submit]");
    await page.locator("#search-results:not([hidden])").waitFor();
    const rows = await paths(page.locator("#search-results tbody td:first-child"));
    assert.deepEqual(
      rows,
      pushed.main!.filter((p) => p.includes("openssl")),
    );
    await page.fill("#search-input", "100%_");
    await page.click("#search-form button[type=submit]");
    await page.locator("#search-status", { hasText: /^0 paths/ }).waitFor();
    assert.equal(await page.locator("#search-results").isHidden(), true, "% and _ match literally");
  });

  it("refuses a bad token and says so", async (t) => {
    if (!s) return t.skip("backend unavailable");
    await page.fill("#token-input", `nxs_${"B".repeat(43)}`);
    await page.click("#token-use");
    await page.locator("#token-status", { hasText: "refused" }).waitFor();
    assert.match((await page.locator("#token-status").textContent()) ?? "", /token refused: unknown token/);
    assert.equal(await card("team").count(), 0);
  });

  it("shows a private cache, its netrc snippet and its paths once a token with pull is given", async (t) => {
    if (!s) return t.skip("backend unavailable");
    await page.fill("#token-input", teamToken);
    await page.click("#token-use");
    await card("team").waitFor();
    assert.equal(await card("team").locator(".badge").textContent(), "private");
    assert.equal(await card("team").locator(".description").textContent(), "Team builds (private)");
    assert.match(
      (await card("team").locator(".nix-conf").textContent()) ?? "",
      /netrc-file = \/etc\/nix\/netrc/,
    );
    assert.match(
      (await card("team").locator(".netrc").textContent()) ?? "",
      /^machine 127\.0\.0\.1\npassword /,
    );
    assert.ok(!((await page.content()) ?? "").includes(teamToken), "the token is not written into the page");
    await page.selectOption("#search-cache", "team");
    await page.fill("#search-input", "secret-tool");
    await page.click("#search-form button[type=submit]");
    await page.locator("#search-results:not([hidden])").waitFor();
    assert.deepEqual(await paths(page.locator("#search-results tbody td:first-child")), pushed.team);

    mkdirSync(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: join(ARTIFACTS, "dashboard.png"), fullPage: true });
    assert.deepEqual(problems, [], "no script errors, no CSP violations");
  });

  it("forgets the token", async (t) => {
    if (!s) return t.skip("backend unavailable");
    await page.click("#token-forget");
    await card("team").waitFor({ state: "detached" });
    assert.equal(await card("main").count(), 1);
  });
});
