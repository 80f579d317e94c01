/**
 * One error class decides the exit code: everything the user can fix (bad flags, bad config,
 * a file lychd must not overwrite) is a UsageError or ConfigError with a message meant to be
 * read as is. Anything else reaching main.ts is a bug and prints a stack trace.
 */
export class LychdError extends Error {
  constructor(message: string, readonly exitCode = 1) {
    super(message);
    this.name = "LychdError";
  }
}

/** Wrong command line: exit 2, like most CLIs. */
export class UsageError extends LychdError {
  constructor(message: string) {
    super(message, 2);
    this.name = "UsageError";
  }
}

/** A problem in lychd.yaml or in a value given by flag, located as precisely as we can. */
export class ConfigError extends LychdError {
  constructor(readonly problems: Problem[]) {
    super(problems.map(formatProblem).join("\n"), 2);
    this.name = "ConfigError";
  }
}

/** One thing wrong with the input: where (file:line:col or --flag), which key, what was expected. */
export interface Problem {
  /** "lychd.yaml:12:5" or "--model"; filled in by whoever knows the source. */
  where?: string;
  /** Dotted key path, e.g. "cartridges.vllm.model". */
  key: string;
  message: string;
}

export function formatProblem(p: Problem): string {
  const at = p.where ? `${p.where}: ` : "";
  return `${at}${p.key}: ${p.message}`;
}
