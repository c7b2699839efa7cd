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

import pg from 'pg'
import PgBoss from 'pg-boss'

import { insertAll, options, report, waitForAll } from './harness.mjs'

const require = createRequire(import.meta.url)
const version = require('pg-boss/package.json').version

const { opt, n } = options({
  'batch-size': { type: 'string', default: '16' },
  mode: { type: 'string', default: 'work' }
}, ['batch-size'])
const { jobs, workers } = n
const batchSize = n['batch-size']
const url = opt.url
if (!['work', 'fetch'].includes(opt.mode)) throw new Error(`--mode must be work or fetch, not ${opt.mode}`)

const queue = 'bench'
const log = (msg) => process.stderr.write(`  [pg-boss] ${msg}\n`)

// One pool connection per worker plus a few for the supervisor and the completions.
const boss = new PgBoss({ connectionString: url, max: workers + 2 })
boss.on('error', (err) => log(`error: ${err.message}`))
await boss.start()
await boss.createQueue(queue)

const insertSeconds = await insertAll(jobs, n['insert-batch'], (count, first) =>
  boss.insert(Array.from({ length: count }, (_, k) => ({ name: queue, data: { i: first + k } }))))
log(`inserted ${jobs} jobs in ${insertSeconds.toFixed(2)} s`)

const poll = new pg.Client({ connectionString: url })
await poll.connect()
const done = async () => {
  const completed = (await poll.query(
    "SELECT count(*)::int AS n FROM pgboss.job WHERE name = $1 AND state = 'completed'", [queue])).rows[0].n
  return { all: completed >= jobs, what: `${completed} completed` }
}

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

await waitForAll(jobs, () => handled, done)
const seconds = (performance.now() - t0) / 1000

await poll.end()
await boss.stop({ graceful: false, close: true })

const insertBatch = n['insert-batch']
const configuration = opt.mode === 'work'
  ? `work() x${workers}, batchSize ${batchSize}, pollingIntervalSeconds 0.5; insert() ${insertBatch}/call`
  : `fetch()+complete() loops x${workers}, batchSize ${batchSize}; insert() ${insertBatch}/call`
report({ system: 'pg-boss', version, mode: opt.mode, configuration, workers }, jobs, seconds, insertSeconds)
