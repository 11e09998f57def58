// Reasoning through the AI SDK's own useChat transport (DefaultChatTransport), which checks every chunk against the
// SDK's uiMessageChunkSchema, and readUIMessageStream, which builds the UI message from the chunks:
// node uireasoning.mjs BASE_URL OTHER_BASE_URL MODEL -> one JSON object with what each case saw.
//   answer:  an answer from a model that reasons, read to its end;
//   dropped, resumed: a resumable answer read from BASE_URL until three reasoning deltas, then the client goes away;
//            the transport's reconnect (useChat's `resume: true`) reads it again from OTHER_BASE_URL, another API
//            process on the same Redis.
import { DefaultChatTransport, readUIMessageStream } from "ai";

const [base, other, model] = process.argv.slice(2);
const user = (text) => ({ id: `u-${Math.random()}`, role: "user", parts: [{ type: "text", text }] });

// The chunks' types, and the message built from them; `stopAfter` reasoning deltas, the reader lets go.
async function read(stream, { stopAfter = Infinity, controller } = {}) {
  const types = [];
  const [forTypes, forMessage] = stream.tee();
  const collecting = (async () => {
    const reader = forTypes.getReader();
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        types.push(value.type);
        if (types.filter((t) => t === "reasoning-delta").length >= stopAfter) {
          controller.abort();
          break;
        }
      }
    } catch (error) {
      types.push(`aborted:${error.name}`);
    }
  })();
  let last;
  try {
    for await (const message of readUIMessageStream({ stream: forMessage })) last = message;
  } catch (error) {
    last = last ?? { error: error.name };
  }
  await collecting;
  return { types, message: last };
}

async function send(api, chatId, body, messages, options = {}) {
  const controller = new AbortController();
  const stream = await new DefaultChatTransport({ api, body }).sendMessages({
    chatId,
    messages,
    trigger: "submit-message",
    messageId: undefined,
    abortSignal: controller.signal,
  });
  return read(stream, { ...options, controller });
}

const out = {};
const ask = [user("What is the capital of France?")];
out.answer = await send(`${base}/v1/ui/chat`, "chat-think", { model, temperature: 0, maxTokens: 12 }, ask);
const story = [user("Write a long story about a dragon.")];
const resumable = { model, temperature: 0, maxTokens: 48, resumable: true };
out.dropped = await send(`${base}/v1/ui/chat`, "chat-think-resume", resumable, story, { stopAfter: 3 });
const again = await new DefaultChatTransport({ api: `${other}/v1/ui/chat` }).reconnectToStream({
  chatId: "chat-think-resume",
});
out.resumed = again === null ? null : await read(again);
process.stdout.write(JSON.stringify(out));
