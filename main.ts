/**
 * lychd's entry point: parse argv, dispatch to one command, map errors to exit codes.
 * Nothing else happens here.
 */
import { parseCommand } from "./lib/cli.ts";
import { LychdError } from "./lib/errors.ts";
import { helpText } from "./lib/help.ts";
import { EXIT } from "./lib/exit.ts";
import { denoHost } from "./lib/host.ts";
import { versionLine } from "./lib/version.ts";

async function main(argv: string[]): Promise<number> {
  const command = parseCommand(argv);
  switch (command.kind) {
    case "help": {
      const text = helpText(command.topic);
      if (text === null) throw new LychdError(`no help for "${command.topic}"`, EXIT.USAGE);
      denoHost.out(text);
      return EXIT.OK;
    }
    case "version":
      denoHost.out(`${versionLine()}\n`);
      return EXIT.OK;
    case "init": {
      const { init } = await import("./lib/commands/init.ts");
      return await init(denoHost, command);
    }
    case "render": {
      const { render } = await import("./lib/commands/init.ts");
      return await render(denoHost, command);
    }
    case "swap": {
      const { swap } = await import("./lib/commands/swap.ts");
      return await swap(denoHost, command);
    }
    case "status": {
      const { status } = await import("./lib/commands/status.ts");
      return await status(denoHost, command);
    }
    case "stop": {
      const { stop } = await import("./lib/commands/stop.ts");
      return await stop(denoHost, command);
    }
    case "logs": {
      const { logs } = await import("./lib/commands/logs.ts");
      return await logs(denoHost, command);
    }
    case "uninstall": {
      const { uninstall } = await import("./lib/commands/uninstall.ts");
      return await uninstall(denoHost, command);
    }
    case "pull": {
      const { pull } = await import("./lib/commands/pull.ts");
      return await pull(denoHost, command);
    }
    case "completions": {
      const { completionScript } = await import("./lib/commands/completions.ts");
      denoHost.out(completionScript(command.shell));
      return EXIT.OK;
    }
    case "doctor": {
      const { doctor } = await import("./lib/commands/doctor.ts");
      return await doctor(denoHost, command);
    }
  }
}

if (import.meta.main) {
  try {
    Deno.exitCode = await main(Deno.args);
  } catch (e) {
    if (e instanceof LychdError) {
      denoHost.err(`lychd: ${e.message}\n`);
      Deno.exitCode = e.exitCode;
    } else if (e instanceof Deno.errors.NotCapable) {
      denoHost.err(
        `lychd: ${(e as Error).message}\nlychd's permission set does not allow this ` +
          '(see README, "Permissions").\n',
      );
      Deno.exitCode = EXIT.FAILED;
    } else {
      throw e;
    }
  }
}
