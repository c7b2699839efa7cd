// graphile-worker throughput for scripts/bench-peers: runs the migrations, adds --jobs jobs in
// batches with `addJobs` (the `add_jobs` SQL function), then one worker pool with concurrency
// --workers completes them with a task that does nothing. Prints one JSON line.
//
//   node graphile-worker.mjs --url postgres://... [--jobs 20000] [--workers 16] [--local-queue 50]
//
// Run from a directory whose node_modules has graphile-worker and pg (bench-peers copies it
// there).
//
// Configuration: the batching of graphile-worker's performance guide: a local queue
// (`localQueue.size`, where the version has it), batched completions (`completeJobBatchDelay: 0`,
// `failJobBatchDelay: 0`), `useNodeTime`, and a pool of concurrency + 2 connections.
//
// The clock (performance.now()) starts after the migrations and the inserts, at the pool's first
// fetch (the local queue's first fetch, or a worker's first get_job), and stops when the jobs
// table is empty (graphile-worker deletes a job when it completes), polled from a separate
// connection once the task has seen every job.
import { createRequire } from 'node:module'
import { EventEmitter } from 'node:events'
import { performance } from 'node:perf_hooks'

import pg from 'pg'

import { insertAll, options, report, waitForAll } from './harness.mjs'

// Read at module load: without it every completion formats a log line.
process.env.NO_LOG_SUCCESS ??= '1'
const { Logger, makeWorkerUtils, run, runMigrations } = await import('graphile-worker')

const require = createRequire(import.meta.url)
const version = require('graphile-worker/package.json').version

const { opt, n } = options({ 'local-queue': { type: 'string', default: '50' } }, ['local-queue'])
const { jobs, workers } = n
const url = opt.url

const log = (msg) => process.stderr.write(`  [graphile-worker] ${msg}\n`)
const logger = new Logger(() => (level, message) => {
  if (level === 'error' || level === 'warning') log(`${level}: ${message}`)
})

// localQueue arrived in 0.17; older versions ignore unknown keys, so say what ran.
const [major, minor] = version.split('.').map(Number)
const hasLocalQueue = major > 0 || minor >= 17
const worker = {
  connectionString: url,
  concurrentJobs: workers,
  maxPoolSize: workers + 2,
  useNodeTime: true,
  completeJobBatchDelay: 0,
  failJobBatchDelay: 0,
  ...(hasLocalQueue ? { localQueue: { size: n['local-queue'] } } : {})
}
const preset = { worker }

await runMigrations({ preset, logger })

const utils = await makeWorkerUtils({ preset, logger })
const insertSeconds = await insertAll(jobs, n['insert-batch'], (count, first) =>
  utils.addJobs(Array.from({ length: count }, (_, k) => ({ identifier: 'noop', payload: { i: first + k } }))))
await utils.release()
log(`inserted ${jobs} jobs in ${insertSeconds.toFixed(2)} s`)

const poll = new pg.Client({ connectionString: url })
await poll.connect()
// graphile-worker deletes a job when it completes.
const done = async () => {
  const left = (await poll.query('SELECT count(*)::int AS n FROM graphile_worker._private_jobs')).rows[0].n
  return { all: left === 0, what: `${left} left` }
}

let handled = 0
let t0 = null
const events = new EventEmitter()
const firstFetch = () => { t0 ??= performance.now() }
events.once('localQueue:init', firstFetch)
events.once('worker:getJob:start', firstFetch)
const started = performance.now()
const runner = await run({
  preset,
  logger,
  events,
  noHandleSignals: true,
  crontab: '',
  taskList: { noop: async () => { handled++ } }
})

await waitForAll(jobs, () => handled, done)
const seconds = (performance.now() - (t0 ?? started)) / 1000

await poll.end()
await runner.stop()

const configuration = [
  `concurrency ${workers}`,
  hasLocalQueue ? `localQueue.size ${n['local-queue']}` : 'no localQueue (before 0.17)',
  'completeJobBatchDelay 0',
  'useNodeTime',
  `maxPoolSize ${workers + 2}`,
  `addJobs ${n['insert-batch']}/call`
].join(', ')
report({ system: 'graphile-worker', version, configuration, workers }, jobs, seconds, insertSeconds)
