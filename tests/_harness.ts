/**
 * The one test harness, for tests, bench and demo alike: processes started as
 * deno.json's tasks define them (permissions read from deno.json once), the
 * child environment, deadlines, the E2eError assertion and the chat driver.
 * Domain fixtures (a CA service, joined users, raw peers) build on it.
 *
 * @module
 */
export { deadline, DeadlineError, sleep, waitUntil, Wakeup, within } from "./_harness/deadlines.ts";
export {
  childEnv,
  freePort,
  ROOT,
  type RunResult,
  runTask,
  type RunTaskOptions,
  type Task,
  taskFlags,
  type TaskOptions,
  TaskProcess,
  underUlimit,
} from "./_harness/processes.ts";
export {
  ChatClient,
  type ChatEvent,
  type ChatStartOptions,
  type ChatUser,
  connect,
  EVENT_TIMEOUT_MS,
  type EventMatch,
  stopAll,
} from "./_harness/chat.ts";
export { concurrentSteps } from "./_harness/steps.ts";
export { e2eError, type E2eErrorOptions, withTempDir } from "../lib/_test_util.ts";
