#!/usr/bin/env python3
"""The original system's approach, as the write-up describes it after its fixes: every download
started concurrently as an asyncio task, aiohttp with a connection limit, aiofiles writes, a tqdm
bar driven by completions, and each finished id appended to a record file.

    python3 bench/original.py URLS_FILE OUT_DIR --limit 5

Prints the number of files written and the seconds taken. Used by bench/polite.py as the
baseline haul replaces; runs in the bench's virtual environment (aiohttp, aiofiles, tqdm).
"""
import argparse, asyncio, os, sys, time

import aiofiles
import aiohttp
from tqdm import tqdm


async def fetch(session, url, out_dir, bar, record):
    name = url.rsplit("/", 1)[-1].split("?", 1)[0]
    try:
        async with session.get(url) as response:
            if response.status != 200:
                return False
            async with aiofiles.open(os.path.join(out_dir, name), "wb") as f:
                async for chunk in response.content.iter_chunked(64 * 1024):
                    await f.write(chunk)
        async with aiofiles.open(record, "a") as r:
            await r.write(name + "\n")
        return True
    except aiohttp.ClientError:
        return False
    finally:
        bar.update(1)


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("urls")
    ap.add_argument("out")
    ap.add_argument("--limit", type=int, default=5)
    args = ap.parse_args()
    urls = [u.strip() for u in open(args.urls) if u.strip()]
    os.makedirs(args.out, exist_ok=True)
    record = os.path.join(args.out, "done.txt")
    started = time.perf_counter()
    connector = aiohttp.TCPConnector(limit=args.limit)
    async with aiohttp.ClientSession(connector=connector) as session:
        with tqdm(total=len(urls), file=sys.stderr, disable=not sys.stderr.isatty()) as bar:
            results = await asyncio.gather(*(fetch(session, u, args.out, bar, record) for u in urls))
    print(f"{sum(results)} {time.perf_counter() - started:.3f}")


if __name__ == "__main__":
    asyncio.run(main())
