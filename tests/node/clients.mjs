// The official openai npm client and the Vercel AI SDK against herd; prints one JSON object of what they saw.
// Usage: node clients.mjs BASE_URL MODEL
import OpenAI from "openai";
import { createOpenAICompatible } from "@ai-sdk/openai-compatible";
import { embedMany, generateText, streamText } from "ai";

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

console.log(JSON.stringify(out));
