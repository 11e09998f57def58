// A small Markdown subset as React elements (never as HTML, so a model's output cannot inject markup):
// fenced code blocks, headings, bullet and numbered lists, paragraphs, `code`, **bold**, *italic*.
const INLINE = /(`[^`]+`|\*\*[^*]+\*\*|\*[^*\s][^*]*\*)/g;

function inline(text, key) {
  return text.split(INLINE).map((piece, i) => {
    const k = `${key}-${i}`;
    if (piece.startsWith("`") && piece.endsWith("`") && piece.length > 1) return <code key={k}>{piece.slice(1, -1)}</code>;
    if (piece.startsWith("**") && piece.endsWith("**") && piece.length > 3) return <strong key={k}>{piece.slice(2, -2)}</strong>;
    if (piece.startsWith("*") && piece.endsWith("*") && piece.length > 2) return <em key={k}>{piece.slice(1, -1)}</em>;
    return piece;
  });
}

export function Markdown({ text }) {
  const blocks = [];
  const lines = text.split("\n");
  for (let i = 0; i < lines.length; ) {
    const line = lines[i];
    if (line.startsWith("```")) {
      const code = [];
      for (i += 1; i < lines.length && !lines[i].startsWith("```"); i += 1) code.push(lines[i]);
      i += 1;
      blocks.push(<pre key={blocks.length}><code>{code.join("\n")}</code></pre>);
    } else if (/^#{1,6} /.test(line)) {
      blocks.push(<h4 key={blocks.length}>{inline(line.replace(/^#+ /, ""), blocks.length)}</h4>);
      i += 1;
    } else if (/^\s*([-*]|\d+\.) /.test(line)) {
      const ordered = /^\s*\d+\./.test(line);
      const items = [];
      for (; i < lines.length && /^\s*([-*]|\d+\.) /.test(lines[i]); i += 1) {
        items.push(<li key={items.length}>{inline(lines[i].replace(/^\s*([-*]|\d+\.) /, ""), `${blocks.length}-${items.length}`)}</li>);
      }
      blocks.push(ordered ? <ol key={blocks.length}>{items}</ol> : <ul key={blocks.length}>{items}</ul>);
    } else if (line.trim() === "") {
      i += 1;
    } else {
      const para = [];
      for (; i < lines.length && lines[i].trim() !== "" && !/^(```|#{1,6} |\s*([-*]|\d+\.) )/.test(lines[i]); i += 1) para.push(lines[i]);
      blocks.push(<p key={blocks.length}>{inline(para.join("\n"), blocks.length)}</p>);
    }
  }
  return <>{blocks}</>;
}
