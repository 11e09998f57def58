// herd's chat page (/chat/) in Debian's headless Chromium, driven by playwright-core (no browser download).
// node chatpage.mjs CASE JSON_ARGS -> one JSON object with what the page showed.
//   same-origin {page, screenshot}: a streamed answer, tokens/s, a stopped answer, a screenshot
//   cross-origin {page, herd, key}: the page on another origin asks for a key, then chats (CORS); `blocked` is
//   the same page on an Origin herd does not allow.
//   resume {page, maxTokens}: a long answer, the page reloaded while it streams, the answer continued to its end.
//   reasoning {page, model, screenshot?}: an answer from a model that reasons: its reasoning block, folded, opened.
import { chromium } from "playwright-core";

const [which, raw] = process.argv.slice(2);
const args = JSON.parse(raw);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  headless: true,
  // Test host names resolve to loopback inside the browser only; nothing leaves the machine.
  args: ["--host-resolver-rules=MAP chat.example 127.0.0.1, MAP evil.example 127.0.0.1", "--no-sandbox"],
});
const page = await browser.newPage({ viewport: { width: 900, height: 640 } });
const urls = [];
page.on("request", (request) => urls.push(request.url()));
const requests = []; // "METHOD path status" of herd's chat endpoints
page.on("response", (response) => {
  const url = new URL(response.url());
  if (url.pathname.startsWith("/v1/ui/chat")) requests.push(`${response.request().method()} ${url.pathname} ${response.status()}`);
});
const out = {};

async function ask(text) {
  const before = await page.locator("article.assistant").count();
  await page.getByLabel("message").fill(text);
  await page.getByLabel("message").press("Enter");
  const answer = page.locator("article.assistant").nth(before);
  await answer.waitFor();
  return answer;
}

async function savedAnswer() {
  // The chat's messages as the page keeps them (localStorage, under the id in the URL's hash): the answer's raw text.
  return page.evaluate(() => {
    const id = decodeURIComponent(window.location.hash.slice(1));
    const messages = JSON.parse(localStorage.getItem(`herd-chat:${id}`) ?? "[]");
    const last = messages.at(-1);
    return {
      roles: messages.map((m) => m.role),
      text: (last?.parts ?? []).filter((p) => p.type === "text").map((p) => p.text).join(""),
      finished: Boolean(last?.metadata?.usage),
    };
  });
}

async function lengthsWhileStreaming(answer) {
  // The answer's text length each time it changes, until its stats line shows (the finish chunk came).
  const seen = [];
  for (;;) {
    const length = (await answer.locator("p, li, pre, h4").allInnerTexts()).join("").length;
    if (seen.at(-1) !== length) seen.push(length);
    if (await answer.locator(".stats").count()) return seen;
    await page.waitForTimeout(25);
  }
}

try {
  if (which === "same-origin") {
    await page.goto(args.page);
    await page.getByLabel("model").waitFor();
    out.models = await page.getByLabel("model").locator("option").allInnerTexts();
    // Bounded: at the page's temperature an answer can run on to the context's end, and the next question, with it
    // in the history, would then not fit.
    await page.getByLabel("max tokens").fill("400");
    const first = await ask("Name three colors.");
    out.lengths = await lengthsWhileStreaming(first);
    out.text = (await first.locator("p, li, pre, h4").allInnerTexts()).join("\n");
    out.stats = await first.locator(".stats").innerText();
    out.listItems = await first.locator("li").count(); // markdown: a numbered list renders as <ol><li>
    await page.screenshot({ path: args.screenshot });

    const long = await ask("Write a very long story about a dragon and a knight, with many chapters.");
    await long.locator("p, li").first().waitFor();
    await page.getByRole("button", { name: "Stop" }).click();
    await page.getByRole("button", { name: "Send" }).waitFor();
    const stoppedAt = (await long.innerText()).length;
    await page.waitForTimeout(1500); // a stopped answer stays as it was
    out.stopped = { grew: (await long.innerText()).length !== stoppedAt, stats: await long.locator(".stats").count() };
  } else if (which === "resume") {
    await page.goto(args.page);
    await page.getByLabel("model").waitFor();
    await page.getByLabel("max tokens").fill(String(args.maxTokens));
    const answer = await ask("Write a very long story about a dragon and a knight, with many chapters.");
    await answer.locator("p, li").first().waitFor(); // it streams
    out.url = page.url();
    out.before = await savedAnswer(); // what the page had when it went away
    await page.reload();
    await page.getByLabel("model").waitFor();
    const resumed = page.locator("article.assistant");
    await resumed.last().locator(".stats").waitFor({ timeout: 300_000 });
    out.after = await savedAnswer();
    out.assistants = await resumed.count();
    out.stats = await resumed.last().locator(".stats").innerText();
    out.reloadedUrl = page.url();
    out.requests = [...requests];
  } else if (which === "reasoning") {
    await page.goto(args.page);
    await page.getByLabel("model").selectOption(args.model);
    await page.getByLabel("max tokens").fill("24");
    const answer = await ask("What is the capital of France?");
    await answer.locator(".stats").waitFor();
    const block = answer.locator("details.reasoning");
    out.blocks = await block.count();
    out.first = await answer.locator(":scope > *").first().evaluate((e) => `${e.tagName} ${e.className}`);
    out.summary = await block.locator("summary").innerText();
    out.foldedWhenDone = !(await block.evaluate((e) => e.open));
    out.hiddenWhenFolded = !(await block.locator("p").isVisible());
    await block.locator("summary").click();
    out.shownWhenOpened = await block.locator("p").isVisible();
    out.text = await block.locator("p").innerText();
    out.parts = await page.evaluate(() => {
      const id = decodeURIComponent(window.location.hash.slice(1));
      const messages = JSON.parse(localStorage.getItem(`herd-chat:${id}`) ?? "[]");
      return (messages.at(-1)?.parts ?? []).map((p) => p.type);
    });
    if (args.screenshot) await page.screenshot({ path: args.screenshot });
  } else if (which === "cross-origin") {
    await page.goto(args.page);
    await page.getByLabel("server").fill(args.herd);
    await page.getByRole("button", { name: "Connect" }).click();
    await page.getByLabel("API key").waitFor(); // herd answered 401 (readable: CORS) and the page asks for a key
    await page.getByLabel("API key").fill(args.key);
    await page.getByRole("button", { name: "Connect" }).click();
    await page.getByLabel("model").waitFor();
    const answer = await ask("Say hello.");
    await answer.locator(".stats").waitFor();
    out.text = await answer.innerText();
    out.keyInUrl = urls.some((u) => u.includes(args.key));
    out.herdRequests = urls.filter((u) => u.startsWith(args.herd)).map((u) => new URL(u).pathname);
    out.storedKey = await page.evaluate(() => sessionStorage.getItem("herd-api-key") !== null);
  } else if (which === "blocked") {
    await page.goto(args.page);
    await page.getByLabel("server").fill(args.herd);
    await page.getByRole("button", { name: "Connect" }).click();
    // The page first tried its own origin and may show that alert already: wait for the one about herd.
    const alert = page.getByRole("alert").filter({ hasText: args.herd });
    await alert.waitFor();
    out.alert = await alert.innerText();
  }
} finally {
  await browser.close();
}
process.stdout.write(JSON.stringify(out));
