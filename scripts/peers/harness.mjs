// What the peer benchmarks of scripts/bench-peers share: their options, the timed bulk insert,
// the wait for the last completion, and the one JSON line each prints.
import { performance } from 'node:perf_hooks'
import { parseArgs } from 'node:util'

/// The common options (--url, --jobs, --workers, --insert-batch) and `extra` ones; every
/// option named in `integers` must be a positive integer.
export function options (extra, integers) {
  const { values: opt } = parseArgs({
    options: {
      url: { type: 'string' },
      jobs: { type: 'string', default: '20000' },
      workers: { type: 'string', default: '16' },
      'insert-batch': { type: 'string', default: '1000' },
      ...extra
    }
  })
  opt.url ??= process.env.DATABASE_URL
  if (!opt.url) throw new Error('--url (or DATABASE_URL) is required')
  const n = {}
  for (const key of ['jobs', 'workers', 'insert-batch', ...integers]) {
    n[key] = Number(opt[key])
    if (!Number.isInteger(n[key]) || n[key] < 1) throw new Error(`--${key} must be a positive integer`)
  }
  return { opt, n }
}

/// Inserts `jobs` jobs, `batch` per `insert(count, first)` call; returns the seconds it took.
export async function insertAll (jobs, batch, insert) {
  const started = performance.now()
  for (let i = 0; i < jobs; i += batch) await insert(Math.min(batch, jobs - i), i)
  return (performance.now() - started) / 1000
}

/// Waits until `handled()` reached `jobs` and then `done()` (a database query) says every
/// completion is written. Fails when neither moves for 60 s.
export async function waitForAll (jobs, handled, done) {
  let last = null
  let lastChange = performance.now()
  for (;;) {
    const finished = handled() >= jobs ? await done() : null
    if (finished?.all) return
    const progress = `${handled()} handled, ${finished?.what ?? 'nothing'} in the database`
    if (progress !== last) {
      last = progress
      lastChange = performance.now()
    } else if (performance.now() - lastChange > 60_000) {
      throw new Error(`stalled: ${progress}, of ${jobs}`)
    }
    await new Promise((resolve) => setTimeout(resolve, handled() >= jobs ? 5 : 20))
  }
}

/// Prints the run as one JSON line.
export function report (fields, jobs, seconds, insertSeconds) {
  console.log(JSON.stringify({
    ...fields,
    jobs,
    seconds,
    per_s: jobs / seconds,
    insert_seconds: insertSeconds,
    insert_per_s: jobs / insertSeconds,
    end_to_end_per_s: jobs / (insertSeconds + seconds)
  }))
}
