// The one error type of the Nix format library. Every parser in nix/ throws it for malformed input, with a
// one-line message that names what is wrong (and where, for byte streams), so callers can show it to a user
// or map it to a 4xx without inspecting anything else.

export class NixFormatError extends Error {
  override readonly name = "NixFormatError";
}

/** Quote untrusted text for an error message: one line (JSON escapes), cut to `max` characters. */
export function quote(s: string, max = 120): string {
  const cut = s.length > max ? `${s.slice(0, max)}…` : s;
  return JSON.stringify(cut);
}
