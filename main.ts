/**
 * lychd's entry point: parse argv, dispatch to one command, map errors to exit codes.
 * Nothing else happens here.
 */
import { parseCommand } from "./lib/cli.ts";
import { LychdError } from "./lib/errors.ts";
import { helpText } from "./lib/help.ts";
import { EXIT } from "./lib/exit.ts";
import { denoHost, type Host } from "./lib/host.ts";
import { versionLine } from "./lib/version.ts";
import { permissionMessage } from "./lib/permissions.ts";

async function dispatch(argv: string[], host: Host): Promise<number> {
  const command = parseCommand(argv);
  switch (command.kind) {
    case "help": {
      const text = helpText(command.topic);
      if (text === null) throw new LychdError(`no help for "${command.topic}"`, EXIT.USAGE);
      host.out(text);
      return EXIT.OK;
    }
    case "version":
      host.out(`${versionLine()}\n`);
      return EXIT.OK;
    case "init": {
      const { init } = await import("./lib/commands/init.ts");
      return await init(host, command);
    }
    case "render": {
      const { render } = await import("./lib/commands/init.ts");
      return await render(host, command);
    }
    case "swap": {
      const { swap } = await import("./lib/commands/swap.ts");
      return await swap(host, command);
    }
    case "gate": {
      const { gate } = await import("./lib/commands/gate.ts");
      return await gate(host, command);
    }
    case "status": {
      const { status } = await import("./lib/commands/status.ts");
      return await status(host, command);
    }
    case "stop": {
      const { stop } = await import("./lib/commands/stop.ts");
      return await stop(host, command);
    }
    case "logs": {
      const { logs } = await import("./lib/commands/logs.ts");
      return await logs(host, command);
    }
    case "uninstall": {
      const { uninstall } = await import("./lib/commands/uninstall.ts");
      return await uninstall(host, command);
    }
    case "pull": {
      const { pull } = await import("./lib/commands/pull.ts");
      return await pull(host, command);
    }
    case "completions": {
      const { completionScript } = await import("./lib/commands/completions.ts");
      host.out(completionScript(command.shell));
      return EXIT.OK;
    }
    case "doctor": {
      const { doctor } = await import("./lib/commands/doctor.ts");
      return await doctor(host, command);
    }
  }
}

/**
 * Run one lychd command on `host` and return its exit code: lychd's own errors become their
 * message and code. The compiled binary passes the real host; tests may wrap it.
 */
export async function main(argv: string[], host: Host): Promise<number> {
  try {
    return await dispatch(argv, host);
  } catch (e) {
    if (e instanceof LychdError) {
      host.err(`lychd: ${e.message}\n`);
      return e.exitCode;
    }
    if (e instanceof Deno.errors.NotCapable) {
      host.err(`lychd: ${permissionMessage((e as Error).message)}\n`);
      return EXIT.FAILED;
    }
    throw e;
  }
}

if (import.meta.main) Deno.exitCode = await main(Deno.args, denoHost);
