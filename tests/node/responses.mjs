// The Responses API from JavaScript: the openai npm client (responses.create / .stream) and the Vercel AI SDK's
// default OpenAI provider (`openai(modelId)` from @ai-sdk/openai, which calls /responses). Every /responses exchange
// goes through a recording fetch, so the test can validate the raw bodies and events with the openai Python types.
// Prints one JSON object. Usage: node responses.mjs BASE_URL MODEL
import OpenAI from "openai";
import { createOpenAI } from "@ai-sdk/openai";
import { generateText, Output, stepCountIs, streamText, tool } from "ai";
import { z } from "zod";

const [baseURL, model] = [process.argv[2] + "/v1", process.argv[3]];
const out = { exchanges: [] };
const reading = [];

async function recordingFetch(url, init) {
  const res = await fetch(url, init);
  if (String(url).includes("/responses")) {
    const exchange = { url: String(url), method: init?.method ?? "GET", request: init?.body ?? null, status: res.status };
    exchange.type = res.headers.get("content-type");
    reading.push(res.clone().text().then((body) => { exchange.body = body; out.exchanges.push(exchange); }));
  }
  return res;
}

const ask = "Name three colors.";
const client = new OpenAI({ baseURL, apiKey: "unused", maxRetries: 0, fetch: recordingFetch });
const created = await client.responses.create({ model, input: ask, max_output_tokens: 16, temperature: 0 });
out.openaiCreate = { id: created.id, status: created.status, text: created.output_text, usage: created.usage };
const stream = client.responses.stream({ model, input: ask, max_output_tokens: 16, temperature: 0 });
const kinds = [];
let deltas = "";
for await (const event of stream) {
  kinds.push(event.type);
  if (event.type === "response.output_text.delta") deltas += event.delta;
}
const final = await stream.finalResponse();
out.openaiStream = { kinds, deltas, text: final.output_text, status: final.status };

const openai = createOpenAI({ baseURL, apiKey: "unused", fetch: recordingFetch });
const generated = await generateText({ model: openai(model), prompt: ask, maxOutputTokens: 16, temperature: 0 });
out.aiGenerate = {
  text: generated.text, finishReason: generated.finishReason, usage: generated.usage,
  responseId: generated.providerMetadata?.openai?.responseId ?? generated.response?.id,
};
const st = streamText({ model: openai(model), prompt: ask, maxOutputTokens: 16, temperature: 0 });
let streamed = "";
for await (const part of st.textStream) streamed += part;
out.aiStream = { text: streamed, finishReason: await st.finishReason, usage: await st.usage };

// Two turns with store on (the provider's default): the second sends the first answer as an item_reference.
const first = [{ role: "user", content: "My name is Ada. Say hello to me." }];
const turn1 = await generateText({ model: openai(model), messages: first, maxOutputTokens: 16, temperature: 0 });
const history = [...first, ...turn1.response.messages, { role: "user", content: "What is my name?" }];
const turn2 = await generateText({ model: openai(model), messages: history, maxOutputTokens: 16, temperature: 0 });
out.aiTurns = { first: turn1.text, second: turn2.text };

// A tool round trip: the model must call the tool first, then answer from its result.
const weather = tool({
  description: "The weather in a city",
  inputSchema: z.object({ city: z.string().max(40) }),
  execute: async ({ city }) => ({ city, temperature: 21, sky: "clear" }),
});
const roundTrip = await generateText({
  model: openai(model), prompt: "What is the weather in Paris?", tools: { weather }, maxOutputTokens: 60,
  temperature: 0, prepareStep: ({ stepNumber }) => ({ toolChoice: stepNumber === 0 ? "required" : "none" }),
  stopWhen: stepCountIs(2),
});
out.aiTools = {
  steps: roundTrip.steps.map((step) => ({
    finishReason: step.finishReason,
    toolCalls: step.toolCalls.map((call) => ({ name: call.toolName, input: call.input })),
    toolResults: step.toolResults.map((result) => result.output),
  })),
  text: roundTrip.text,
};

// Structured output from a zod schema whose fields carry `pattern` (z.email(), z.uuid(), a regex).
const contact = z.object({
  email: z.email().max(40), id: z.uuid(), code: z.string().regex(/^[A-Z]{3}-\d{3}$/),
});
const structured = await generateText({
  model: openai(model), prompt: "Make up a contact as JSON: email, id, code.", maxOutputTokens: 160, temperature: 0,
  output: Output.object({ schema: contact }),
});
out.aiObject = { object: structured.output, finishReason: structured.finishReason };

await Promise.all(reading);
console.log(JSON.stringify(out));
