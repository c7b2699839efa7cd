// pg-boss throughput for scripts/bench-peers: inserts --jobs jobs in batches with `insert`, then
// --workers workers complete them with a handler that does nothing. Prints one JSON line.
//
//   node pg-boss.mjs --url postgres://... [--jobs 20000] [--workers 16] [--batch-size 16]
//                    [--mode work|fetch]
//
// Run from a directory whose node_modules has pg-boss and pg (bench-peers copies it there).
//
// Modes:
//   work   `boss.work(queue, { batchSize, pollingIntervalSeconds: 0.5 }, handler)` once per
//          worker: pg-boss's own worker loop, which completes each batch when the handler returns
//          and, in 10.x, waits out the rest of the polling interval after every fetch (0.5 s is
//          the shortest allowed).
//   fetch  one loop per worker of `boss.fetch(queue, { batchSize })` then `boss.complete(queue,
//          ids)`, with no wait between fetches: the same SQL without the interval.
//
// The clock (performance.now()) starts after `start()` (which creates the schema), the queue and
// the inserts, right before the first fetch, and stops when the database shows every job
// completed (polled from a separate connection once the handlers have seen them all).
import { createRequire } from 'node:module'
import { performance } from 'node:perf_hooks'
import { parseArgs } from 'node:util'

import pg from 'pg'
import PgBoss from 'pg-boss'

const require = createRequire(import.meta.url)
const version = require('pg-boss/package.json').version

const { values: opt } = parseArgs({
  options: {
    url: { type: 'string' },
    jobs: { type: 'string', default: '20000' },
    workers: { type: 'string', default: '16' },
    'batch-size': { type: 'string', default: '16' },
    mode: { type: 'string', default: 'work' },
    'insert-batch': { type: 'string', default: '1000' }
  }
})
const url = opt.url ?? process.env.DATABASE_URL
const jobs = Number(opt.jobs)
const workers = Number(opt.workers)
const batchSize = Number(opt['batch-size'])
const insertBatch = Number(opt['insert-batch'])
if (!url) throw new Error('--url (or DATABASE_URL) is required')
if (!['work', 'fetch'].includes(opt.mode)) throw new Error(`--mode must be work or fetch, not ${opt.mode}`)
for (const [k, v] of Object.entries({ jobs, workers, batchSize, insertBatch })) {
  if (!Number.isInteger(v) || v < 1) throw new Error(`${k} must be a positive integer`)
}

const queue = 'bench'
const log = (msg) => process.stderr.write(`  [pg-boss] ${msg}\n`)

// One pool connection per worker plus a few for the supervisor and the completions.
const boss = new PgBoss({ connectionString: url, max: workers + 2 })
boss.on('error', (err) => log(`error: ${err.message}`))
await boss.start()
await boss.createQueue(queue)

const inserted0 = performance.now()
for (let i = 0; i < jobs; i += insertBatch) {
  const n = Math.min(insertBatch, jobs - i)
  await boss.insert(Array.from({ length: n }, (_, k) => ({ name: queue, data: { i: i + k } })))
}
const insertSeconds = (performance.now() - inserted0) / 1000
log(`inserted ${jobs} jobs in ${insertSeconds.toFixed(2)} s`)

const poll = new pg.Client({ connectionString: url })
await poll.connect()
const completed = async () =>
  (await poll.query("SELECT count(*)::int AS n FROM pgboss.job WHERE name = $1 AND state = 'completed'", [queue])).rows[0].n

let handled = 0
const handler = async (batch) => { handled += batch.length }

const t0 = performance.now()
if (opt.mode === 'work') {
  for (let w = 0; w < workers; w++) {
    await boss.work(queue, { batchSize, pollingIntervalSeconds: 0.5 }, handler)
  }
} else {
  const loop = async () => {
    for (;;) {
      const batch = await boss.fetch(queue, { batchSize })
      if (!batch || batch.length === 0) return
      await handler(batch)
      await boss.complete(queue, batch.map((job) => job.id))
    }
  }
  await Promise.all(Array.from({ length: workers }, loop))
}

// Wait for the handlers, then for the completions to be written. Bounded: fails when nothing
// moves for 60 s.
let last = -1
let lastChange = performance.now()
for (;;) {
  const done = handled >= jobs ? await completed() : -1
  if (done >= jobs) break
  const progress = handled + Math.max(done, 0)
  if (progress !== last) {
    last = progress
    lastChange = performance.now()
  } else if (performance.now() - lastChange > 60_000) {
    throw new Error(`stalled: ${handled} handled, ${done} completed of ${jobs}`)
  }
  await new Promise((resolve) => setTimeout(resolve, handled >= jobs ? 5 : 20))
}
const seconds = (performance.now() - t0) / 1000

await poll.end()
await boss.stop({ graceful: false, close: true })

const configuration = opt.mode === 'work'
  ? `work() x${workers}, batchSize ${batchSize}, pollingIntervalSeconds 0.5; insert() ${insertBatch}/call`
  : `fetch()+complete() loops x${workers}, batchSize ${batchSize}; insert() ${insertBatch}/call`
console.log(JSON.stringify({
  system: 'pg-boss',
  version,
  mode: opt.mode,
  configuration,
  jobs,
  workers,
  seconds,
  per_s: jobs / seconds,
  insert_seconds: insertSeconds,
  insert_per_s: jobs / insertSeconds,
  end_to_end_per_s: jobs / (insertSeconds + seconds)
}))
