/**
 * `lychd completions bash|zsh|fish`: a completion script generated from the command table in
 * lib/cli.ts, so it never drifts from the real flags. Engine names complete from the built-in
 * cartridges (custom engines are typed by hand).
 */
import { COMMANDS } from "../cli.ts";
import { BUILTIN_NAMES } from "../engines.ts";

function flagsOf(command: string): string[] {
  return Object.keys(COMMANDS[command].flags).map((f) => `--${f}`);
}

const POSITIONAL_WORDS: Record<string, string[]> = {
  ENGINE: [...BUILTIN_NAMES],
  TARGET: [...BUILTIN_NAMES, "harvester", "scribe"],
  "ENGINE...": [...BUILTIN_NAMES],
  SHELL: ["bash", "zsh", "fish"],
};

function words(command: string): string[] {
  return (COMMANDS[command].positionals ?? []).flatMap((p) => POSITIONAL_WORDS[p] ?? []);
}

export function completionScript(shell: "bash" | "zsh" | "fish"): string {
  const commands = Object.keys(COMMANDS);
  if (shell === "fish") {
    const lines = [
      "# lychd completions for fish: lychd completions fish > ~/.config/fish/completions/lychd.fish",
      "complete -c lychd -f",
      `complete -c lychd -n __fish_use_subcommand -a '${commands.join(" ")} help'`,
    ];
    for (const c of commands) {
      for (const f of Object.keys(COMMANDS[c].flags)) {
        lines.push(`complete -c lychd -n '__fish_seen_subcommand_from ${c}' -l ${f}`);
      }
      if (words(c).length) {
        lines.push(
          `complete -c lychd -n '__fish_seen_subcommand_from ${c}' -a '${words(c).join(" ")}'`,
        );
      }
    }
    return lines.join("\n") + "\n";
  }
  const cases = commands.map((c) => `    ${c}) opts="${[...flagsOf(c), ...words(c)].join(" ")}" ;;`)
    .join("\n");
  const bash = `_lychd() {
  local cur=\${COMP_WORDS[COMP_CWORD]} opts
  if [ "$COMP_CWORD" -eq 1 ]; then
    COMPREPLY=($(compgen -W "${commands.join(" ")} help --help --version" -- "$cur"))
    return
  fi
  case "\${COMP_WORDS[1]}" in
${cases}
    *) opts="" ;;
  esac
  COMPREPLY=($(compgen -W "$opts" -- "$cur"))
}
complete -o default -F _lychd lychd
`;
  if (shell === "bash") {
    return `# lychd completions for bash: source <(lychd completions bash)\n${bash}`;
  }
  return `#compdef lychd
# lychd completions for zsh: lychd completions zsh > "\${fpath[1]}/_lychd" (or source it)
autoload -U +X bashcompinit && bashcompinit
${bash}`;
}
