// herd's chat page: useChat (@ai-sdk/react) over herd's own UI message stream endpoint, /v1/ui/chat.
import { useChat } from "@ai-sdk/react";
import { DefaultChatTransport } from "ai";
import { useEffect, useMemo, useRef, useState } from "react";
import { createRoot } from "react-dom/client";
import { Markdown } from "./markdown.jsx";
import "./style.css";

// The key lives in this tab's sessionStorage and travels only in the Authorization header, never in a URL.
const KEY = "herd-api-key";
const SERVER = "herd-server";

function headersFor(key) {
  return key ? { authorization: `Bearer ${key}` } : {};
}

// The chat's id is in the URL's hash and its messages in localStorage, so a reload keeps the conversation and
// resumes an answer still streaming (useChat's `resume: true`: herd replays it from GET /v1/ui/chat/{id}/stream).
function chatId() {
  const id = decodeURIComponent(window.location.hash.slice(1));
  if (/^[\w-]{1,64}$/.test(id)) return id;
  // getRandomValues, not randomUUID: the page may be served from an origin that is not a secure context.
  const bytes = crypto.getRandomValues(new Uint8Array(12));
  const fresh = `chat-${Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("")}`;
  history.replaceState(null, "", `#${fresh}`);
  return fresh;
}

function savedMessages(id) {
  try {
    return JSON.parse(localStorage.getItem(`herd-chat:${id}`) ?? "[]");
  } catch {
    return [];
  }
}

function Chat({ server, apiKey, models, id, onNewChat }) {
  const [model, setModel] = useState(models[0] ?? "");
  const [temperature, setTemperature] = useState(0.2);
  const [maxTokens, setMaxTokens] = useState("");
  const [input, setInput] = useState("");
  const settingsRef = useRef({});
  settingsRef.current = { model, temperature, ...(maxTokens ? { maxTokens: Number(maxTokens) } : {}) };
  const transport = useMemo(
    () =>
      new DefaultChatTransport({
        api: `${server}/v1/ui/chat`,
        headers: () => headersFor(apiKey),
        body: () => ({ ...settingsRef.current, resumable: true }),
      }),
    [server, apiKey],
  );
  const initial = useMemo(() => savedMessages(id), [id]);
  const { messages, sendMessage, status, stop, error } = useChat({ id, messages: initial, transport, resume: true });
  const busy = status === "submitted" || status === "streaming";
  const end = useRef(null);
  useEffect(() => {
    end.current?.scrollIntoView({ block: "end" });
    localStorage.setItem(`herd-chat:${id}`, JSON.stringify(messages));
  }, [messages, id]);
  // A resumable answer outlives its connection (that is what a reload relies on): Stop tells herd to end it.
  const halt = () => {
    stop();
    fetch(`${server}/v1/ui/chat/${encodeURIComponent(id)}/stream`, { method: "DELETE", headers: headersFor(apiKey) });
  };

  const submit = (event) => {
    event.preventDefault();
    if (!input.trim() || busy) return;
    sendMessage({ text: input });
    setInput("");
  };

  return (
    <main>
      <header>
        <h1>herd</h1>
        <label>
          model{" "}
          <select aria-label="model" value={model} onChange={(e) => setModel(e.target.value)}>
            {models.map((m) => (
              <option key={m}>{m}</option>
            ))}
          </select>
        </label>
        <label>
          max tokens{" "}
          <input
            aria-label="max tokens"
            type="number"
            min="1"
            step="1"
            value={maxTokens}
            onChange={(e) => setMaxTokens(e.target.value)}
          />
        </label>
        <label>
          temperature{" "}
          <input
            aria-label="temperature"
            type="number"
            min="0"
            max="2"
            step="0.1"
            value={temperature}
            onChange={(e) => setTemperature(Number(e.target.value))}
          />
        </label>
        <button type="button" onClick={onNewChat} disabled={busy}>
          New chat
        </button>
      </header>
      <section className="log" aria-live="polite">
        {messages.map((m) => (
          <article key={m.id} className={m.role} data-role={m.role}>
            {m.parts.map((part, i) =>
              part.type === "reasoning" ? (
                // Open while the model is still thinking, folded once it is done (a click opens it again).
                <details key={i} className="reasoning" open={part.state === "streaming"}>
                  <summary>{part.state === "streaming" ? "Thinking…" : "Reasoning"}</summary>
                  <p>{part.text}</p>
                </details>
              ) : part.type === "text" ? (
                <Markdown key={i} text={part.text} />
              ) : part.type.startsWith("tool-") ? (
                <pre key={i} className="tool">{`${part.type.slice(5)}(${JSON.stringify(part.input ?? {})})`}</pre>
              ) : null,
            )}
            {m.metadata?.tokensPerSecond ? (
              <footer className="stats">
                {m.metadata.usage.outputTokens} tokens · {m.metadata.tokensPerSecond.toFixed(1)} tokens/s · {m.metadata.model}
              </footer>
            ) : null}
          </article>
        ))}
        {error ? <p className="error" role="alert">{error.message}</p> : null}
        <div ref={end} />
      </section>
      <form onSubmit={submit}>
        <textarea
          aria-label="message"
          value={input}
          placeholder="Send a message (Enter; Shift+Enter for a new line)"
          onChange={(e) => setInput(e.target.value)}
          onKeyDown={(e) => {
            if (e.key === "Enter" && !e.shiftKey) submit(e);
          }}
        />
        {busy ? (
          <button type="button" onClick={halt}>
            Stop
          </button>
        ) : (
          <button type="submit">Send</button>
        )}
      </form>
    </main>
  );
}

function App() {
  const [server, setServer] = useState(localStorage.getItem(SERVER) || window.location.origin);
  const [apiKey, setApiKey] = useState(sessionStorage.getItem(KEY) || "");
  const [models, setModels] = useState(null);
  const [problem, setProblem] = useState("");
  const [needKey, setNeedKey] = useState(false);
  const [chat, setChat] = useState(chatId);

  useEffect(() => {
    let live = true;
    fetch(`${server}/v1/models`, { headers: headersFor(apiKey) })
      .then(async (reply) => {
        if (!live) return;
        if (reply.status === 401 || reply.status === 403) {
          setNeedKey(true);
          setProblem(apiKey ? "That key was not accepted." : "");
          return;
        }
        if (!reply.ok) throw new Error(`GET /v1/models answered ${reply.status}`);
        const list = await reply.json();
        setNeedKey(false);
        setProblem("");
        setModels(list.data.map((m) => m.id));
      })
      .catch((e) => live && setProblem(`Cannot reach herd at ${server}: ${e.message}`));
    return () => {
      live = false;
    };
  }, [server, apiKey]);

  const settings = (
    <form
      className="settings"
      onSubmit={(e) => {
        e.preventDefault();
        const data = new FormData(e.currentTarget);
        const url = String(data.get("server") || window.location.origin).replace(/\/$/, "");
        const key = String(data.get("key") || "");
        localStorage.setItem(SERVER, url);
        sessionStorage.setItem(KEY, key);
        setModels(null);
        setServer(url);
        setApiKey(key);
      }}
    >
      <input name="server" aria-label="server" defaultValue={server} />
      {needKey ? <input name="key" aria-label="API key" type="password" placeholder="API key" autoComplete="off" /> : null}
      <button type="submit">Connect</button>
      {problem ? <p className="error" role="alert">{problem}</p> : null}
    </form>
  );
  if (!models) return <main>{settings}</main>;
  const newChat = () => {
    history.replaceState(null, "", window.location.pathname + window.location.search);
    setChat(chatId());
  };
  return <Chat key={chat} server={server} apiKey={apiKey} models={models} id={chat} onNewChat={newChat} />;
}

createRoot(document.getElementById("root")).render(<App />);
