// The AI SDK's own useChat transport (DefaultChatTransport) against herd's /v1/ui/chat, without a server of its own:
// node uichat.mjs BASE_URL MODEL -> one JSON object with what each case saw.
import { DefaultChatTransport, readUIMessageStream } from "ai";

const [base, model] = process.argv.slice(2);
const api = `${base}/v1/ui/chat`;
const user = (text) => ({ id: `u-${Math.random()}`, role: "user", parts: [{ type: "text", text }] });

async function send(body, messages, { abortAfterText = false } = {}) {
  const transport = new DefaultChatTransport({ api, body });
  const controller = new AbortController();
  const stream = await transport.sendMessages({
    chatId: "chat-1",
    messages,
    trigger: "submit-message",
    messageId: undefined,
    abortSignal: controller.signal,
  });
  const types = [];
  const [forTypes, forMessage] = stream.tee();
  const collecting = (async () => {
    const reader = forTypes.getReader();
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        types.push(value.type);
        if (abortAfterText && value.type === "text-delta" && types.filter((t) => t === "text-delta").length >= 3) {
          controller.abort();
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

const out = {};
const greedy = { model, temperature: 0, maxTokens: 16 };
out.text = await send(greedy, [user("Name three colors.")]);
// A second turn carries the first answer back as an assistant UI message.
out.followUp = await send(greedy, [user("Name three colors."), out.text.message, user("And one more?")]);
out.stopped = await send({ model, temperature: 0, maxTokens: 400 }, [user("Write a long story about a dragon.")], {
  abortAfterText: true,
});
const tools = [
  {
    type: "function",
    function: {
      name: "get_weather",
      description: "The weather in a city",
      parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] },
    },
  },
];
out.tool = await send({ model, temperature: 0, maxTokens: 64, tools, toolChoice: "required" }, [
  user("What is the weather in Paris?"),
]);
// The client ran the tool: its output goes back in the assistant message's tool part, and the model answers.
const called = out.tool.message;
const answered = {
  ...called,
  parts: called.parts.map((p) =>
    p.type === "tool-get_weather" ? { ...p, state: "output-available", output: { celsius: 21 } } : p,
  ),
};
out.toolResult = await send({ model, temperature: 0, maxTokens: 24, tools }, [
  user("What is the weather in Paris?"),
  answered,
]);
try {
  await send({ model: "no-such-model" }, [user("hi")]);
  out.notFound = { thrown: false };
} catch (error) {
  out.notFound = { thrown: true, message: error.message };
}
process.stdout.write(JSON.stringify(out));
