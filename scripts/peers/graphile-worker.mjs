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
import { parseArgs } from 'node:util'

import pg from 'pg'

// Read at module load: without it every completion formats a log line.
process.env.NO_LOG_SUCCESS ??= '1'
const { Logger, makeWorkerUtils, run, runMigrations } = await import('graphile-worker')

const require = createRequire(import.meta.url)
const version = require('graphile-worker/package.json').version

const { values: opt } = parseArgs({
  options: {
    url: { type: 'string' },
    jobs: { type: 'string', default: '20000' },
    workers: { type: 'string', default: '16' },
    'local-queue': { type: 'string', default: '50' },
    'insert-batch': { type: 'string', default: '1000' }
  }
})
const url = opt.url ?? process.env.DATABASE_URL
const jobs = Number(opt.jobs)
const workers = Number(opt.workers)
const localQueueSize = Number(opt['local-queue'])
const insertBatch = Number(opt['insert-batch'])
if (!url) throw new Error('--url (or DATABASE_URL) is required')
for (const [k, v] of Object.entries({ jobs, workers, localQueueSize, insertBatch })) {
  if (!Number.isInteger(v) || v < 1) throw new Error(`${k} must be a positive integer`)
}

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
  ...(hasLocalQueue ? { localQueue: { size: localQueueSize } } : {})
}
const preset = { worker }

await runMigrations({ preset, logger })

const utils = await makeWorkerUtils({ preset, logger })
const inserted0 = performance.now()
for (let i = 0; i < jobs; i += insertBatch) {
  const n = Math.min(insertBatch, jobs - i)
  await utils.addJobs(Array.from({ length: n }, (_, k) => ({ identifier: 'noop', payload: { i: i + k } })))
}
const insertSeconds = (performance.now() - inserted0) / 1000
await utils.release()
log(`inserted ${jobs} jobs in ${insertSeconds.toFixed(2)} s`)

const poll = new pg.Client({ connectionString: url })
await poll.connect()
const remaining = async () =>
  (await poll.query('SELECT count(*)::int AS n FROM graphile_worker._private_jobs')).rows[0].n

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

let last = -1
let lastChange = performance.now()
for (;;) {
  const left = handled >= jobs ? await remaining() : -1
  if (left === 0) break
  if (handled !== last) {
    last = handled
    lastChange = performance.now()
  } else if (performance.now() - lastChange > 60_000) {
    throw new Error(`stalled: ${handled} handled, ${left} left of ${jobs}`)
  }
  await new Promise((resolve) => setTimeout(resolve, handled >= jobs ? 5 : 20))
}
const seconds = (performance.now() - (t0 ?? started)) / 1000

await poll.end()
await runner.stop()

const configuration = [
  `concurrency ${workers}`,
  hasLocalQueue ? `localQueue.size ${localQueueSize}` : 'no localQueue (before 0.17)',
  'completeJobBatchDelay 0',
  'useNodeTime',
  `maxPoolSize ${workers + 2}`,
  `addJobs ${insertBatch}/call`
].join(', ')
console.log(JSON.stringify({
  system: 'graphile-worker',
  version,
  configuration,
  jobs,
  workers,
  seconds,
  per_s: jobs / seconds,
  insert_seconds: insertSeconds,
  insert_per_s: jobs / insertSeconds,
  end_to_end_per_s: jobs / (insertSeconds + seconds)
}))
