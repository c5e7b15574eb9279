//! `gdx datagen`: realistic synthetic data of a Meizhou-like city, for demos,
//! tests and benchmarks.
//!
//! Every value of row `i` is derived from `(seed, kind, i)` alone (a
//! counter-based generator), so output is deterministic for a seed, any range
//! of rows can be produced on its own, and kinds refer to each other: the
//! legal representative of enterprise `j` and the insured of enrolment `i`
//! are people of the population generated with the same seed and `--people`.
//! Resident ID numbers are unique by construction (a bijection of the row
//! number onto county × birth date × sequence) and carry valid check
//! characters (GB 11643); credit codes likewise (GB 32100).

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, Date32Builder, Decimal128Builder, RecordBatch, StringBuilder};
use arrow::datatypes::SchemaRef;
use chrono::{Datelike, NaiveDate};
use serde_json::{Value, json};

use crate::error::{Error, Result};

/// The division codes and names of Meizhou's counties and districts.
pub const COUNTIES: [(&str, &str); 8] = [
    ("441402", "梅江区"),
    ("441403", "梅县区"),
    ("441422", "大埔县"),
    ("441423", "丰顺县"),
    ("441424", "五华县"),
    ("441426", "平远县"),
    ("441427", "蕉岭县"),
    ("441481", "兴宁市"),
];
const SURNAMES: &[&str] = &[
    "李", "王", "张", "刘", "陈", "杨", "黄", "赵", "吴", "周", "徐", "孙", "马", "朱", "胡", "郭", "何", "高", "林",
    "罗", "曾", "钟", "叶", "古", "丘", "廖", "谢", "温", "巫", "缪",
];
const GIVEN: &[&str] = &[
    "伟", "芳", "娜", "敏", "静", "丽", "强", "磊", "军", "洋", "勇", "艳", "杰", "娟", "涛", "明", "超", "秀", "霞",
    "平", "刚", "桂", "华", "建", "国", "文", "辉", "玲", "红", "梅", "志", "清", "德", "荣", "嘉", "俊", "婷", "雪",
    "晨", "宇",
];
const STREETS: &[&str] =
    &["江北路", "梅州大道", "嘉应路", "彬芳大道", "金山街", "文化路", "元城路", "新中路", "华南大道", "人民路"];
const INDUSTRIES: &[&str] =
    &["制造业", "批发和零售业", "建筑业", "住宿和餐饮业", "农林牧渔业", "信息技术服务业", "交通运输业", "文化旅游业"];
const WORDS: &[&str] =
    &["嘉应", "客都", "梅江", "金柚", "单丛", "围龙", "雁洋", "松口", "阴那", "五指石", "程江", "石扇"];
/// Days in the birth-date range 1930-01-01 ..= 2024-12-31.
const BIRTH_DAYS: u64 = 34_699;
/// Sequence numbers per county and birth date.
const SEQS: u64 = 1000;
/// People that can be generated with distinct ID numbers.
pub const MAX_PEOPLE: u64 = COUNTIES.len() as u64 * BIRTH_DAYS * SEQS;
/// Rows per generated batch.
const BATCH: usize = 65_536;

/// What to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// Population registry (public security): ID number, name, gender, birth date, county, address, mobile.
    Population,
    /// Enterprises (market regulation): credit code, name, legal representative, capital, founding date, status.
    Enterprises,
    /// Social-insurance enrolment (human resources and social security), one per person.
    SocialInsurance,
    /// Pension records of people aged 60 and over.
    Pensions,
    /// Business-licence certificates with expiry dates, one per enterprise.
    Licences,
}

impl Kind {
    /// The dataset name the demo registers it as.
    pub fn dataset_name(self) -> &'static str {
        match self {
            Kind::Population => "population",
            Kind::Enterprises => "enterprises",
            Kind::SocialInsurance => "social_insurance",
            Kind::Pensions => "pensions",
            Kind::Licences => "licences",
        }
    }

    fn tag(self) -> u64 {
        match self {
            Kind::Population => 0x11,
            Kind::Enterprises => 0x22,
            Kind::SocialInsurance => 0x33,
            Kind::Pensions => 0x44,
            Kind::Licences => 0x55,
        }
    }

    /// The catalogue entry of this kind for `department` (an API `POST /api/v1/datasets` body).
    pub fn definition(self, department: &str) -> Value {
        let col = |name: &str, t: &str, nullable: bool, title: &str, sensitivity: &str, semantic: Option<&str>| {
            let mut c =
                json!({"name": name, "type": t, "nullable": nullable, "title": title, "sensitivity": sensitivity});
            if let Some(s) = semantic {
                c["semantic"] = json!(s);
            }
            c
        };
        let (title, code, class, category, sharing, condition, cycle, pk, columns, description) = match self {
            Kind::Population => (
                "户籍人口基础信息",
                "1-01-001-0001",
                "basic",
                "人口",
                "unconditional",
                None,
                "daily",
                vec!["id_number"],
                vec![
                    col("id_number", "string", false, "公民身份号码", "personal", Some("id_card")),
                    col("name", "string", false, "姓名", "personal", Some("person_name")),
                    col("gender", "string", false, "性别", "internal", None),
                    col("birth_date", "date", false, "出生日期", "personal", None),
                    col("county_code", "string", false, "户籍所在县区代码", "internal", None),
                    col("address", "string", true, "户籍地址", "personal", Some("address")),
                    col("phone", "string", true, "联系电话", "personal", Some("phone")),
                ],
                "全市户籍人口的基础信息：身份号码、姓名、性别、出生日期、户籍所在县区、地址和联系电话。",
            ),
            Kind::Enterprises => (
                "市场主体登记信息",
                "1-02-001-0001",
                "basic",
                "法人",
                "unconditional",
                None,
                "daily",
                vec!["credit_code"],
                vec![
                    col("credit_code", "string", false, "统一社会信用代码", "public", Some("credit_code")),
                    col("name", "string", false, "企业名称", "public", None),
                    col("legal_rep_id", "string", true, "法定代表人身份号码", "personal", Some("id_card")),
                    col("registered_capital", "decimal(18,2)", true, "注册资本（万元）", "public", None),
                    col("founded_on", "date", true, "成立日期", "public", None),
                    col("status", "string", false, "登记状态", "public", None),
                    col("industry", "string", true, "行业门类", "public", None),
                    col("county_code", "string", false, "登记机关所在县区代码", "public", None),
                ],
                "全市企业等市场主体的登记信息：统一社会信用代码、名称、法定代表人、注册资本、成立日期和登记状态。",
            ),
            Kind::SocialInsurance => (
                "社会保险参保信息",
                "2-03-001-0001",
                "thematic",
                "社会保障",
                "conditional",
                Some("用于社会保障待遇核定、就业服务和主动推送服务，需说明用途"),
                "monthly",
                vec!["id_number"],
                vec![
                    col("id_number", "string", false, "公民身份号码", "personal", Some("id_card")),
                    col("insurance_type", "string", false, "险种", "internal", None),
                    col("enrolled_on", "date", false, "参保日期", "internal", None),
                    col("status", "string", false, "参保状态", "internal", None),
                    col(
                        "employer_credit_code",
                        "string",
                        true,
                        "参保单位统一社会信用代码",
                        "internal",
                        Some("credit_code"),
                    ),
                ],
                "基本养老保险参保登记：险种、参保日期、参保状态和参保单位。",
            ),
            Kind::Pensions => (
                "养老金领取信息",
                "2-03-002-0001",
                "thematic",
                "社会保障",
                "conditional",
                Some("用于待遇资格认证和民生救助核对，需说明用途"),
                "monthly",
                vec!["id_number"],
                vec![
                    col("id_number", "string", false, "公民身份号码", "personal", Some("id_card")),
                    col("monthly_amount", "decimal(10,2)", false, "月领取金额（元）", "personal", None),
                    col("started_on", "date", false, "开始领取日期", "internal", None),
                    col("status", "string", false, "领取状态", "internal", None),
                ],
                "60周岁以上人员的养老金领取记录。",
            ),
            Kind::Licences => (
                "营业执照证照信息",
                "1-02-002-0001",
                "department",
                "证照",
                "unconditional",
                None,
                "daily",
                vec!["licence_no"],
                vec![
                    col("licence_no", "string", false, "执照编号", "public", None),
                    col("credit_code", "string", false, "统一社会信用代码", "public", Some("credit_code")),
                    col("issued_on", "date", false, "发照日期", "public", None),
                    col("expires_on", "date", true, "有效期至", "public", None),
                    col("issuer", "string", false, "发证机关", "public", None),
                ],
                "营业执照电子证照：编号、发照日期、有效期和发证机关。",
            ),
        };
        let mut d = json!({
            "department": department, "name": self.dataset_name(), "title": title, "resource_code": code,
            "classification": class, "category": category, "description": description, "sharing": sharing,
            "update_cycle": cycle, "primary_key": pk, "columns": columns,
        });
        if let Some(c) = condition {
            d["sharing_condition"] = json!(c);
        }
        d
    }
}

/// SplitMix64: small, fast, and good enough for synthetic data.
struct Rng(u64);

impl Rng {
    fn at(seed: u64, tag: u64, row: u64) -> Self {
        let mut r = Rng(seed ^ tag.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ row.wrapping_mul(0xD1B5_4A32_D192_ED03));
        r.next();
        r
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

fn epoch_days(d: NaiveDate) -> i32 {
    d.num_days_from_ce() - 719_163
}

fn birth_base() -> NaiveDate {
    NaiveDate::from_ymd_opt(1930, 1, 1).unwrap_or_default()
}

/// Person `i` of a population generated with `seed`: county index, birth date, sequence.
fn person(seed: u64, i: u64) -> (usize, NaiveDate, u64) {
    // A bijection of 0..MAX_PEOPLE onto itself (multiplication by a unit, plus an offset), so rows stay distinct.
    let p = ((i % MAX_PEOPLE) as u128 * 2_654_435_761u128 + u128::from(seed % MAX_PEOPLE)) % u128::from(MAX_PEOPLE);
    let p = p as u64;
    let seq = p % SEQS;
    let day = (p / SEQS) % BIRTH_DAYS;
    let county = (p / SEQS / BIRTH_DAYS) as usize % COUNTIES.len();
    (county, birth_base() + chrono::Days::new(day), seq)
}

/// The resident ID number of person `i`.
pub fn person_id(seed: u64, i: u64) -> String {
    let (county, born, seq) = person(seed, i);
    let body = format!("{}{}{:03}", COUNTIES[county].0, born.format("%Y%m%d"), seq);
    let check = gdx_connectors::parse::id_card_check(body.as_bytes()).unwrap_or(b'0') as char;
    format!("{body}{check}")
}

/// The unified social credit code of enterprise `j`.
pub fn enterprise_code(seed: u64, j: u64) -> String {
    const A: &[u8; 31] = gdx_catalog::validate::CREDIT_CODE_ALPHABET;
    let mut rng = Rng::at(seed, Kind::Enterprises.tag(), j);
    let county = COUNTIES[rng.below(COUNTIES.len() as u64) as usize].0;
    // Eight distinct symbols from j (a bijection modulo 31^8), then the GB 11714 check character.
    let mut n = (u128::from(j) * 94_758_239_417 + u128::from(seed)) % 31u128.pow(8);
    let mut org = [b'0'; 8];
    for c in org.iter_mut().rev() {
        *c = A[(n % 31) as usize];
        n /= 31;
    }
    // GB 11714 uses digits and letters; map the credit-code alphabet onto it unchanged.
    let w = [3u32, 7, 9, 10, 5, 8, 4, 2];
    let sum: u32 = org
        .iter()
        .zip(w)
        .map(|(c, w)| (if c.is_ascii_digit() { u32::from(c - b'0') } else { u32::from(c - b'A') + 10 }) * w)
        .sum();
    let check = match 11 - sum % 11 {
        10 => 'X',
        11 => '0',
        d => char::from(b'0' + d as u8),
    };
    let body = format!("91{county}{}{check}", std::str::from_utf8(&org).unwrap_or("00000000"));
    let last = gdx_catalog::validate::credit_code_check(body.as_bytes()).unwrap_or(b'0') as char;
    format!("{body}{last}")
}

/// A person of the population aged 20 or over (the first tried, if none is found quickly).
fn adult(rng: &mut Rng, p: &Params) -> u64 {
    let first = rng.below(p.people);
    (0..16)
        .map(|k| if k == 0 { first } else { rng.below(p.people) })
        .find(|i| {
            let (_, born, _) = person(p.seed, *i);
            (p.today - born).num_days() >= 20 * 365
        })
        .unwrap_or(first)
}

fn name(rng: &mut Rng) -> String {
    let mut s = String::from(rng.pick(SURNAMES));
    s.push_str(rng.pick(GIVEN));
    if rng.below(3) != 0 {
        s.push_str(rng.pick(GIVEN));
    }
    s
}

fn date_between(rng: &mut Rng, from: NaiveDate, days: u64) -> NaiveDate {
    from + chrono::Days::new(rng.below(days))
}

/// What a generator needs to know.
#[derive(Debug, Clone, Copy)]
pub struct Params {
    /// Seed of every value.
    pub seed: u64,
    /// Size of the population others refer to.
    pub people: u64,
    /// Number of enterprises licences refer to.
    pub enterprises: u64,
    /// "Today", for ages and expiry dates.
    pub today: NaiveDate,
}

/// The Arrow schema of a kind (as the catalogue entry declares it).
pub fn schema(kind: Kind) -> Result<SchemaRef> {
    let def: gdx_catalog::NewDataset = serde_json::from_value(kind.definition("x"))
        .map_err(|e| Error::Config { message: format!("built-in definition: {e}") })?;
    let d = gdx_catalog::validate::dataset(def, NaiveDate::default())?;
    Ok(Arc::new(d.arrow_schema()))
}

/// Rows `start..start+len` of `kind` (pensions: the `start`-th pensioner onwards).
fn batch(kind: Kind, p: &Params, start: u64, len: usize, schema: &SchemaRef) -> Result<(RecordBatch, u64)> {
    let mut s: Vec<StringBuilder> = (0..8).map(|_| StringBuilder::with_capacity(len, len * 16)).collect();
    let mut d: Vec<Date32Builder> = (0..3).map(|_| Date32Builder::with_capacity(len)).collect();
    let mut money = Decimal128Builder::with_capacity(len);
    let mut next = start;
    let mut rows = 0;
    while rows < len {
        let i = next;
        next += 1;
        match kind {
            Kind::Population => {
                let mut rng = Rng::at(p.seed, kind.tag(), i);
                let (county, born, seq) = person(p.seed, i);
                s[0].append_value(person_id(p.seed, i));
                s[1].append_value(name(&mut rng));
                s[2].append_value(if seq % 2 == 1 { "男" } else { "女" });
                d[0].append_value(epoch_days(born));
                s[3].append_value(COUNTIES[county].0);
                s[4].append_value(format!(
                    "广东省梅州市{}{}{}号",
                    COUNTIES[county].1,
                    rng.pick(STREETS),
                    1 + rng.below(300)
                ));
                if rng.below(20) == 0 {
                    s[5].append_null();
                } else {
                    s[5].append_value(format!("1{}{:09}", 3 + rng.below(7), rng.below(1_000_000_000)));
                }
            }
            Kind::Enterprises => {
                let mut rng = Rng::at(p.seed, kind.tag() + 1, i);
                let code = enterprise_code(p.seed, i);
                let county = &code[2..8];
                s[0].append_value(&code);
                s[1].append_value(format!(
                    "梅州市{}{}{}有限公司",
                    rng.pick(WORDS),
                    rng.pick(WORDS),
                    rng.pick(INDUSTRIES).trim_end_matches('业')
                ));
                s[2].append_value(person_id(p.seed, adult(&mut rng, p)));
                money.append_value(i128::from(10 + rng.below(500_000)) * 100);
                d[0].append_value(epoch_days(date_between(
                    &mut rng,
                    NaiveDate::from_ymd_opt(1990, 1, 1).unwrap_or_default(),
                    13_000,
                )));
                s[3].append_value(match rng.below(20) {
                    0 => "注销",
                    1 => "吊销",
                    _ => "存续",
                });
                s[4].append_value(rng.pick(INDUSTRIES));
                s[5].append_value(county);
            }
            Kind::SocialInsurance => {
                let mut rng = Rng::at(p.seed, kind.tag(), i);
                let (_, born, _) = person(p.seed, i);
                s[0].append_value(person_id(p.seed, i));
                s[1].append_value(if rng.below(3) == 0 {
                    "城乡居民基本养老保险"
                } else {
                    "城镇职工基本养老保险"
                });
                let from =
                    (born + chrono::Days::new(16 * 365)).max(NaiveDate::from_ymd_opt(1995, 1, 1).unwrap_or_default());
                let span = (p.today - from).num_days().max(1) as u64;
                d[0].append_value(epoch_days(date_between(&mut rng, from, span)));
                s[2].append_value(match rng.below(10) {
                    0 => "暂停缴费",
                    1 => "终止参保",
                    _ => "参保缴费",
                });
                if rng.below(3) == 0 || p.enterprises == 0 {
                    s[3].append_null();
                } else {
                    s[3].append_value(enterprise_code(p.seed, rng.below(p.enterprises)));
                }
            }
            Kind::Pensions => {
                if i >= p.people.max(1) * 4 {
                    return Err(Error::Config {
                        message: "not enough people aged 60 or over for that many pension records".into(),
                    });
                }
                let (_, born, _) = person(p.seed, i % p.people.max(1));
                let sixty = born.with_year(born.year() + 60).unwrap_or(born + chrono::Days::new(60 * 365));
                if sixty > p.today || i >= p.people {
                    continue;
                }
                let mut rng = Rng::at(p.seed, kind.tag(), i);
                s[0].append_value(person_id(p.seed, i));
                money.append_value(i128::from(150_000 + rng.below(600_000)));
                d[0].append_value(epoch_days(sixty));
                s[1].append_value(if rng.below(25) == 0 { "暂停领取" } else { "正常领取" });
            }
            Kind::Licences => {
                let mut rng = Rng::at(p.seed, kind.tag(), i);
                let code = enterprise_code(p.seed, i);
                s[0].append_value(format!("{}{:09}", &code[2..8], i));
                s[1].append_value(&code);
                let issued = date_between(&mut rng, NaiveDate::from_ymd_opt(2005, 1, 1).unwrap_or_default(), 7_500);
                d[0].append_value(epoch_days(issued));
                // Most licences run 10 to 20 years; a few are open-ended; some expire within weeks of today.
                match rng.below(50) {
                    0 => d[1].append_null(),
                    1 | 2 => d[1].append_value(epoch_days(p.today + chrono::Days::new(rng.below(45)))),
                    _ => d[1].append_value(epoch_days(issued + chrono::Days::new(3_650 + rng.below(3_650)))),
                }
                let county = COUNTIES.iter().find(|c| c.0 == &code[2..8]).map(|c| c.1).unwrap_or("梅江区");
                s[2].append_value(format!("梅州市{county}市场监督管理局"));
            }
        }
        rows += 1;
    }
    let mut cols: Vec<ArrayRef> = Vec::new();
    let mut si = s.into_iter();
    let mut di = d.into_iter();
    let mut s = || si.next().map(|mut b| Arc::new(b.finish()) as ArrayRef);
    let mut dd = || di.next().map(|mut b| Arc::new(b.finish()) as ArrayRef);
    let missing = || Error::Config { message: "generator column layout".into() };
    match kind {
        Kind::Population => {
            let (a, b, c) = (s().ok_or_else(missing)?, s().ok_or_else(missing)?, s().ok_or_else(missing)?);
            cols.extend([a, b, c, dd().ok_or_else(missing)?]);
            cols.extend([s().ok_or_else(missing)?, s().ok_or_else(missing)?, s().ok_or_else(missing)?]);
        }
        Kind::Enterprises => {
            let (a, b, c) = (s().ok_or_else(missing)?, s().ok_or_else(missing)?, s().ok_or_else(missing)?);
            let m: ArrayRef = Arc::new(money.finish().with_precision_and_scale(18, 2)?);
            cols.extend([a, b, c, m, dd().ok_or_else(missing)?]);
            cols.extend([s().ok_or_else(missing)?, s().ok_or_else(missing)?, s().ok_or_else(missing)?]);
        }
        Kind::SocialInsurance => {
            let (a, b) = (s().ok_or_else(missing)?, s().ok_or_else(missing)?);
            cols.extend([a, b, dd().ok_or_else(missing)?, s().ok_or_else(missing)?, s().ok_or_else(missing)?]);
        }
        Kind::Pensions => {
            let a = s().ok_or_else(missing)?;
            let m: ArrayRef = Arc::new(money.finish().with_precision_and_scale(10, 2)?);
            cols.extend([a, m, dd().ok_or_else(missing)?, s().ok_or_else(missing)?]);
        }
        Kind::Licences => {
            let (a, b) = (s().ok_or_else(missing)?, s().ok_or_else(missing)?);
            let (i, e) = (dd().ok_or_else(missing)?, dd().ok_or_else(missing)?);
            cols.extend([a, b, i, e, s().ok_or_else(missing)?]);
        }
    }
    Ok((RecordBatch::try_new(schema.clone(), cols)?, next))
}

impl From<arrow::error::ArrowError> for Error {
    fn from(e: arrow::error::ArrowError) -> Self {
        Error::Config { message: format!("generating data: {e}") }
    }
}

/// Output file formats of `gdx datagen`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// CSV with a header row, UTF-8.
    Csv,
    /// Parquet (zstd).
    Parquet,
}

/// Writes `rows` rows of `kind` to `out`, reporting progress.
pub fn generate(
    kind: Kind,
    rows: u64,
    p: &Params,
    format: OutputFormat,
    out: &Path,
    progress: &mut dyn FnMut(u64),
) -> Result<u64> {
    if matches!(kind, Kind::SocialInsurance | Kind::Pensions) && rows > p.people {
        return Err(Error::Config { message: format!("--rows must not exceed --people ({}) for {kind:?}", p.people) });
    }
    if kind == Kind::Licences && rows > p.enterprises.max(1) && p.enterprises > 0 {
        return Err(Error::Config {
            message: format!("--rows must not exceed --enterprises ({}) for licences", p.enterprises),
        });
    }
    if rows > MAX_PEOPLE {
        return Err(Error::Config { message: format!("at most {MAX_PEOPLE} rows") });
    }
    let schema = schema(kind)?;
    let io = |source| Error::Io { path: out.to_path_buf(), source };
    let tmp = tempfile::Builder::new()
        .prefix(".datagen-")
        .tempfile_in(out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")))
        .map_err(io)?;
    let file = std::io::BufWriter::with_capacity(1 << 20, tmp.reopen().map_err(io)?);
    enum W {
        Csv(arrow::csv::Writer<std::io::BufWriter<std::fs::File>>),
        Parquet(parquet::arrow::ArrowWriter<std::io::BufWriter<std::fs::File>>),
    }
    let mut w = match format {
        OutputFormat::Csv => W::Csv(arrow::csv::WriterBuilder::new().with_header(true).build(file)),
        OutputFormat::Parquet => {
            let props = parquet::file::properties::WriterProperties::builder()
                .set_compression(parquet::basic::Compression::ZSTD(Default::default()))
                .build();
            W::Parquet(
                parquet::arrow::ArrowWriter::try_new(file, schema.clone(), Some(props))
                    .map_err(|e| Error::Config { message: e.to_string() })?,
            )
        }
    };
    let (mut done, mut cursor) = (0u64, 0u64);
    while done < rows {
        let n = BATCH.min((rows - done) as usize);
        let (b, next) = batch(kind, p, cursor, n, &schema)?;
        cursor = next;
        match &mut w {
            W::Csv(w) => w.write(&b)?,
            W::Parquet(w) => w.write(&b).map_err(|e| Error::Config { message: e.to_string() })?,
        }
        done += b.num_rows() as u64;
        progress(done);
    }
    match w {
        W::Csv(w) => {
            let mut inner = w.into_inner();
            inner.flush().map_err(io)?;
        }
        W::Parquet(w) => {
            w.close().map_err(|e| Error::Config { message: e.to_string() })?;
        }
    }
    tmp.persist(out).map_err(|e| Error::Io { path: out.to_path_buf(), source: e.error })?;
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> Params {
        Params {
            seed: 42,
            people: 5_000,
            enterprises: 500,
            today: NaiveDate::from_ymd_opt(2026, 11, 27).expect("date"),
        }
    }

    #[test]
    fn ids_are_valid_unique_and_deterministic() {
        let ids: std::collections::HashSet<String> = (0..5_000).map(|i| person_id(42, i)).collect();
        assert_eq!(ids.len(), 5_000);
        for id in ids.iter().take(200) {
            assert!(gdx_connectors::parse::id_card(id).is_ok(), "{id}");
        }
        assert_eq!(person_id(42, 7), person_id(42, 7));
        assert_ne!(person_id(42, 7), person_id(43, 7));
        let codes: std::collections::HashSet<String> = (0..500).map(|j| enterprise_code(42, j)).collect();
        assert_eq!(codes.len(), 500);
        for c in &codes {
            assert!(gdx_connectors::parse::credit_code(c).is_ok(), "{c}");
        }
    }

    #[test]
    fn every_kind_generates_rows_its_catalogue_entry_accepts() {
        let dir = tempfile::tempdir().expect("tempdir");
        for kind in [Kind::Population, Kind::Enterprises, Kind::SocialInsurance, Kind::Pensions, Kind::Licences] {
            let out = dir.path().join(format!("{kind:?}.csv"));
            let n = generate(kind, 300, &params(), OutputFormat::Csv, &out, &mut |_| {}).expect("generates");
            assert_eq!(n, 300);
            let def: gdx_catalog::NewDataset = serde_json::from_value(kind.definition("d")).expect("definition");
            let d = gdx_catalog::validate::dataset(def, params().today).expect("valid definition");
            let staged = gdx_connectors::stage(
                &out,
                gdx_connectors::Format::Csv(gdx_connectors::Charset::Utf8),
                &d,
                &gdx_connectors::StageOptions { skip_invalid: false, temp_dir: dir.path().to_path_buf() },
            )
            .expect("stages");
            assert_eq!(staged.error_count, 0, "{kind:?}: {:?}", staged.errors);
            assert_eq!(staged.rows_valid, 300);
            let again = dir.path().join("again.csv");
            generate(kind, 300, &params(), OutputFormat::Csv, &again, &mut |_| {}).expect("generates");
            assert_eq!(
                std::fs::read(&out).expect("read"),
                std::fs::read(&again).expect("read"),
                "{kind:?} is deterministic"
            );
        }
    }
}
