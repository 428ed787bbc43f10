"""`omnihub customers import` and `omnihub segments export` as a user runs them."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

from scrm.importer import import_csv
from scrm.models import Customer, Identity

CSV = """name,phone,email,tags,attr.city,attr.level
李雷,138 0013 8000,li.lei@example.com,vip;高价值,上海,gold
韩梅梅,,han@example.com,vip,北京,
王芳,+8613900139000,,,,silver
坏电话,12345,,,,
没有联系方式,,,vip,,
坏邮件,,not-an-email,,,
李雷（重复）,13800138000,,newsletter,杭州,
"""


def test_import_dedupes_reports_bad_rows_and_is_rerunnable(tmp_path, hub_factory_sync):
    path = tmp_path / "customers.csv"
    path.write_text(CSV, encoding="utf-8")
    report = import_csv(path, "CN")
    assert (report.rows, report.created, report.updated) == (7, 3, 1)
    assert [line for line, _ in report.bad] == [5, 6, 7]
    assert "12345" in report.bad[0][1] and "phone, email or app_user_id" in report.bad[1][1]
    li = Customer.objects(display_name="李雷（重复）").first()
    assert sorted(li.tags) == ["newsletter", "vip", "高价值"]
    assert li.attributes == {"city": "杭州", "level": "gold"}
    phones = Identity.objects(phone="+8613800138000")
    assert phones.count() == 1 and phones.first().verified is False

    again = import_csv(path, "CN")  # a re-run (e.g. after a crash) duplicates nothing
    assert (again.created, again.updated) == (0, 4)
    assert Customer.objects.count() == 3 and Identity.objects.count() == 4


def test_cli_import_and_export_with_progress(tmp_path):
    (tmp_path / "customers.csv").write_text(CSV, encoding="utf-8")
    env = {**os.environ, "OMNIHUB_DATA_DIR": str(tmp_path / "data")}
    run = [sys.executable, "-m", "hub.cli"]
    out = subprocess.run(run + ["customers", "import", "customers.csv"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "7 rows: 3 new customers, 1 updated, 3 skipped" in out.stdout
    assert "line 5: phone '12345'" in out.stderr and "importing" in out.stdout + out.stderr
    out = subprocess.run(run + ["segments", "export", "tag:vip", "-o", "vip.csv"], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "2 customers written to vip.csv" in out.stdout
    with (tmp_path / "vip.csv").open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(r["phone"] or r["email"] for r in rows) == ["+8613800138000",
                                                             "han@example.com"]
    out = subprocess.run(run + ["segments", "export", "tag:vip AND", "-o", "x.jsonl",
                                "--format", "jsonl"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "position 12" in out.stderr
    out = subprocess.run(run + ["customers", "import", "missing.csv"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "does not exist" in out.stderr



def test_an_import_that_crashed_half_way_can_be_run_again(tmp_path, hub_factory_sync,
                                                         monkeypatch):
    import scrm.importer as importer

    path = tmp_path / "customers.csv"
    path.write_text(CSV, encoding="utf-8")
    real = importer._insert_new
    calls = []

    def crash_on_identities(collection, docs):
        calls.append(collection.name)
        if collection.name == "identities":
            raise RuntimeError("killed mid-import")
        real(collection, docs)

    monkeypatch.setattr(importer, "_insert_new", crash_on_identities)
    try:
        import_csv(path, "CN")
    except RuntimeError:
        pass
    assert calls == ["customers", "identities"]
    assert Customer.objects.count() == 3 and Identity.objects.count() == 0
    monkeypatch.setattr(importer, "_insert_new", real)
    report = import_csv(path, "CN")
    assert Customer.objects.count() == 3 and Identity.objects.count() == 4
    assert report.bad and len(report.bad) == 3
