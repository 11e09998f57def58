"""`herd run MODEL [PROMPT]`: one answer, or Ollama's interactive chat (streamed answers, /set, /clear, \"\"\" blocks,
history), a model not on the server pulled first with progress; Ctrl-C closes the answer's HTTP stream, which the
server turns into a cancel for the worker."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any, TextIO

from herd.client import transfer
from herd.client.http import Client, Refused

HELP = """Available Commands:
  /set system <text>          Set the system message
  /set parameter <name> <v>   Set a parameter (temperature, num_predict, seed, top_k, top_p, stop, ...)
  /clear                      Clear the session context
  /bye                        Exit
  /?, /help                   Help for a command

Use \"\"\" to begin a multi-line message."""


def _value(raw: str) -> Any:
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return raw


class Session:
    """One conversation: its messages, system prompt and options; each answer is streamed from /api/chat."""

    def __init__(self, client: Client, model: str, out: TextIO, verbose: bool = False) -> None:
        self.client, self.model, self.out, self.verbose = client, model, out, verbose
        self.system = ""
        self.options: dict[str, Any] = {}
        self.messages: list[dict[str, str]] = []

    def ask(self, text: str) -> str:
        """Stream one answer to `text`; a KeyboardInterrupt stops it (the connection closes) and is re-raised."""
        self.messages.append({"role": "user", "content": text})
        history = ([{"role": "system", "content": self.system}] if self.system else []) + self.messages
        body: dict[str, Any] = {"model": self.model, "messages": history, "stream": True}
        if self.options:
            body["options"] = self.options
        answer: list[str] = []
        try:
            with self.client.lines("/api/chat", body) as lines:
                for item in lines:
                    piece = str(item.get("message", {}).get("content", ""))
                    answer.append(piece)
                    self.out.write(piece)
                    self.out.flush()
                    if item.get("done"):
                        self._stats(item)
        except BaseException:
            self.messages.pop()  # an unanswered turn is not part of the conversation
            raise
        self.messages.append({"role": "assistant", "content": "".join(answer)})
        return "".join(answer)

    def _stats(self, item: dict[str, Any]) -> None:
        if not self.verbose:
            return
        count, ns = int(item.get("eval_count", 0)), int(item.get("eval_duration", 0))
        rate = f"{count / (ns / 1e9):.2f} tokens/s" if ns else "n/a"
        print(f"\n\neval count:    {count} token(s)\neval rate:     {rate}", file=sys.stderr)

    def command(self, line: str) -> bool:
        """A slash command; False when it ends the session."""
        words = line.split(maxsplit=3)
        verb = words[0]
        if verb in ("/bye", "/exit"):
            return False
        if verb == "/clear":
            self.messages.clear()
            print("Cleared session context", file=self.out)
        elif verb == "/set" and len(words) >= 3 and words[1] == "system":
            self.system = line.split(maxsplit=2)[2]
            print("Set system message.", file=self.out)
        elif verb == "/set" and len(words) == 4 and words[1] == "parameter":
            name, value = words[2], _value(words[3])
            if name == "stop":
                self.options.setdefault("stop", []).append(words[3])
            else:
                self.options[name] = value
            print(f"Set parameter '{name}' to '{words[3]}'", file=self.out)
        elif verb in ("/?", "/help"):
            print(HELP, file=self.out)
        else:
            print(f"Unknown command '{line}'. Type /? for help", file=self.out)
        return True


def _history() -> Path:
    return Path.home() / ".herd" / "history"


def _read(prompt: str) -> str:
    """One message: a line, or a \"\"\"-delimited block over several lines."""
    line = input(prompt)
    if not line.lstrip().startswith('"""'):
        return line
    block = [line.lstrip()[3:]]
    while not block[-1].rstrip().endswith('"""') or (len(block) == 1 and block[0].strip() == ""):
        block.append(input("... "))
    block[-1] = block[-1].rstrip()[:-3]
    return "\n".join(block).strip("\n")


def interactive(session: Session) -> int:
    try:
        import readline  # input() gains line editing and history
    except ImportError:  # not on every platform
        readline = None  # type: ignore[assignment]
    if readline is not None:
        with contextlib.suppress(OSError):
            readline.read_history_file(_history())
    try:
        while True:
            try:
                text = _read(">>> ")
            except KeyboardInterrupt:
                print("\nUse Ctrl + d or /bye to exit.", file=session.out)
                continue
            except EOFError:
                print(file=session.out)
                return 0
            if not text.strip():
                continue
            if text.startswith("/"):
                if not session.command(text.strip()):
                    return 0
                continue
            with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C stopped the answer; the conversation goes on
                session.ask(text)
            print("\n", file=session.out)
    finally:
        if readline is not None:
            with contextlib.suppress(OSError):
                _history().parent.mkdir(parents=True, exist_ok=True)
                readline.write_history_file(_history())


def _present(client: Client, model: str) -> str:
    """The model's name on the server, pulled first (with progress) when it is not there, as `ollama run` does. A
    URL is stored under a name of its own; a name herd cannot pull stays a one-line "not found"."""
    local = transfer.local_name(model)
    try:
        client.request("POST", "/api/show", {"model": local})
        return local
    except Refused as exc:
        if exc.status != 404:
            raise
        missing = exc
    try:
        transfer.pull(client, model)
    except Refused as exc:
        if exc.status == 400:  # not something herd pulls: the model is simply not there
            raise missing from exc
        raise
    return local


def run(client: Client, model: str, prompt: list[str], verbose: bool) -> int:
    model = _present(client, model)  # before any prompt: a missing model is pulled, or one line of error
    session = Session(client, model, sys.stdout, verbose)
    piped = not sys.stdin.isatty()
    if prompt or piped:
        text = " ".join(prompt)
        if piped:
            text = (sys.stdin.read() + ("\n\n" + text if text else "")).strip()
        try:
            session.ask(text)
        except KeyboardInterrupt:
            print(file=sys.stdout)
            return 130
        print(file=sys.stdout)
        return 0
    return interactive(session)
