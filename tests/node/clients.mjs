// The official openai npm client and the Vercel AI SDK against herd; prints one JSON object of what they saw.
// Usage: node clients.mjs BASE_URL MODEL
import OpenAI from "openai";
import { createOpenAICompatible } from "@ai-sdk/openai-compatible";
import { embedMany, generateObject, generateText, stepCountIs, streamText, tool } from "ai";
import { z } from "zod";

const [baseURL, model] = [process.argv[2] + "/v1", process.argv[3]];
const messages = [{ role: "user", content: "Name three colors." }];
const out = {};

const client = new OpenAI({ baseURL, apiKey: "unused", maxRetries: 0 });
const whole = await client.chat.completions.create({ model, messages, max_tokens: 16, temperature: 0 });
out.openaiChat = { text: whole.choices[0].message.content, usage: whole.usage, id: whole.id };
let streamed = "";
let streamUsage = null;
let finish = null;
const stream = await client.chat.completions.create({
  model, messages, max_tokens: 16, temperature: 0, stream: true, stream_options: { include_usage: true },
});
for await (const chunk of stream) {
  if (chunk.usage) streamUsage = chunk.usage;
  for (const choice of chunk.choices) {
    streamed += choice.delta.content ?? "";
    if (choice.finish_reason) finish = choice.finish_reason;
  }
}
out.openaiStream = { text: streamed, usage: streamUsage, finish };
const emb = await client.embeddings.create({ model, input: ["red", "blue"] }); // base64 by default, decoded here
out.openaiEmbeddings = { count: emb.data.length, dims: emb.data[0].embedding.length };
try {
  await client.chat.completions.create({ model: "no-such-model", messages });
} catch (err) {
  out.openaiNotFound = { status: err.status, name: err.constructor.name };
}

// A tool call streamed to the openai client: deltas accumulated by index, as apps do.
const weatherAsk = [{ role: "user", content: "What is the weather in Paris?" }];
const toolStream = await client.chat.completions.create({
  model, messages: weatherAsk, max_tokens: 60, temperature: 0, stream: true, tool_choice: "required",
  tools: [{
    type: "function",
    function: {
      name: "get_weather", description: "The weather in a city",
      parameters: {
        type: "object", properties: { city: { type: "string", maxLength: 40 } }, required: ["city"],
        additionalProperties: false,
      },
    },
  }],
});
const calls = {};
let toolFinish = null;
for await (const chunk of toolStream) {
  for (const choice of chunk.choices) {
    for (const delta of choice.delta.tool_calls ?? []) {
      const call = (calls[delta.index] ??= { id: "", name: "", arguments: "", deltas: 0 });
      call.id += delta.id ?? "";
      call.name += delta.function?.name ?? "";
      call.arguments += delta.function?.arguments ?? "";
      call.deltas += 1;
    }
    if (choice.finish_reason) toolFinish = choice.finish_reason;
  }
}
out.openaiToolStream = { calls: Object.values(calls), finish: toolFinish };

const herd = createOpenAICompatible({ name: "herd", baseURL, apiKey: "unused", includeUsage: true });
const generated = await generateText({ model: herd.chatModel(model), messages, maxOutputTokens: 16, temperature: 0 });
out.aiGenerate = { text: generated.text, usage: generated.usage, finishReason: generated.finishReason };
const st = streamText({ model: herd.chatModel(model), messages, maxOutputTokens: 16, temperature: 0 });
let aiText = "";
for await (const part of st.textStream) aiText += part;
out.aiStream = { text: aiText, usage: await st.usage, finishReason: await st.finishReason };
const embedder = herd.embeddingModel ? herd.embeddingModel(model) : herd.textEmbeddingModel(model);
const many = await embedMany({ model: embedder, values: ["red", "blue", "green"] });
out.aiEmbed = { count: many.embeddings.length, dims: many.embeddings[0].length };

// A tool round trip: the SDK runs the tool and sends its result back for the final answer.
const weather = tool({
  description: "The weather in a city",
  inputSchema: z.object({ city: z.string().max(40) }),
  execute: async ({ city }) => ({ city, temperature: 21, sky: "clear" }),
});
const roundTrip = await generateText({
  model: herd.chatModel(model), messages: weatherAsk, tools: { weather }, maxOutputTokens: 60, temperature: 0,
  prepareStep: ({ stepNumber }) => ({ toolChoice: stepNumber === 0 ? "required" : "none" }),
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

// Structured output from a zod schema, sent as response_format json_schema.
const structured = createOpenAICompatible({ name: "herd", baseURL, apiKey: "unused", supportsStructuredOutputs: true });
const cat = await generateObject({
  model: structured.chatModel(model), schema: z.object({ name: z.string().max(30), color: z.string().max(20) }),
  prompt: "Describe a cat as JSON with a name and a color.", maxOutputTokens: 100, temperature: 0,
});
out.aiObject = { object: cat.object, finishReason: cat.finishReason };

console.log(JSON.stringify(out));
